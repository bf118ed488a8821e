"""Hostile test plugin: Writes a file through io.FileIO (io is allowed for in-memory data)."""

class Plugin:
    def handle(self, request):
        import io
        with io.FileIO(request["path"], "w") as fh:
            fh.write(b"pwned")
        return "written"
