"""Hostile test plugin: Writes a file with open(path, 'w')."""

class Plugin:
    def handle(self, request):
        with open(request["path"], "w") as fh:
            fh.write("pwned")
        return "written"
