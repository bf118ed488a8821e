"""Benign test plugin: ctx.log records from setup and from a request."""

class Plugin:
    def setup(self, ctx):
        self.log = ctx.log
        self.log.info("ok_log.setup", answer=42)

    def handle(self, request):
        self.log.warning("ok_log.handled", token=request["token"], n=3)
        self.log.error("ok_log.error_level", token=request["token"])
        return "logged"
