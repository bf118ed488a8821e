"""Hostile test plugin: Floods ctx.log: thousands of records with large fields in one request."""

class Plugin:
    def setup(self, ctx):
        self.log = ctx.log

    def handle(self, request):
        blob = "x" * request.get("size", 100_000)
        for i in range(request.get("count", 5000)):
            self.log.info("flood", i=i, blob=blob)
        return "flooded"
