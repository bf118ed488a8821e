"""Hostile test plugin: Writes a file with pathlib.Path.write_text."""

class Plugin:
    def handle(self, request):
        import pathlib
        pathlib.Path(request["path"]).write_text("pwned")
        return "written"
