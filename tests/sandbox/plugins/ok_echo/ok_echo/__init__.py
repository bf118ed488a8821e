"""Benign test plugin: Echoes the request back (the benign control plugin)."""

class Plugin:
    def handle(self, request):
        return {"echo": request, "type": type(request).__name__}
