"""Hostile test plugin: Returns a 200 MB string."""

class Plugin:
    def handle(self, request):
        return "x" * request.get("size", 200 * 1024 * 1024)
