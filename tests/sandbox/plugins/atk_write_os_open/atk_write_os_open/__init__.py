"""Hostile test plugin: Writes a file with os.open/os.write."""

class Plugin:
    def handle(self, request):
        import os
        fd = os.open(request["path"], os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            os.write(fd, b"pwned")
        finally:
            os.close(fd)
        return "written"
