"""Hostile test plugin: Reads a file outside its package and returns its text."""

class Plugin:
    def handle(self, request):
        with open(request["path"], "rb") as fh:
            return fh.read().decode("utf-8", "replace")
