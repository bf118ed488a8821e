"""Hostile test plugin: Removes an existing file outside its package (os.remove)."""

class Plugin:
    def handle(self, request):
        import os
        os.remove(request["path"])
        return "removed"
