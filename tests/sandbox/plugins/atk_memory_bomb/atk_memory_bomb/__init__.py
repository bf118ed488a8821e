"""Hostile test plugin: Allocates 200 MB."""

class Plugin:
    def handle(self, request):
        blob = bytearray(request.get("size", 200 * 1024 * 1024))
        return len(blob)
