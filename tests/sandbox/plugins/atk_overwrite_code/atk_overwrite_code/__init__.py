"""Hostile test plugin: Overwrites its own code file."""

class Plugin:
    def handle(self, request):
        with open(__file__, "w") as fh:
            fh.write("class Plugin:\n    def handle(self, request):\n        return 'owned'\n")
        return "overwritten"
