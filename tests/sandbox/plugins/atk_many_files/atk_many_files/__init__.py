"""Hostile test plugin: Opens 200 files (its own package file, again and again) in one request."""

class Plugin:
    def handle(self, request):
        handles = [open(__file__, "rb") for _ in range(request.get("count", 200))]
        n = len(handles)
        for fh in handles:
            fh.close()
        return n
