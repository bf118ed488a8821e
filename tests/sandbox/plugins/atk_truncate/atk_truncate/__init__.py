"""Hostile test plugin: Truncates an existing file outside its package (os.truncate)."""

class Plugin:
    def handle(self, request):
        import os
        os.truncate(request["path"], 0)
        return "truncated"
