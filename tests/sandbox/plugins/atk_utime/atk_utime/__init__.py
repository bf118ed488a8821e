"""Hostile test plugin: Changes the timestamps of a file outside its package (os.utime)."""

class Plugin:
    def handle(self, request):
        import os
        os.utime(request["path"], (0, 0))
        return "touched"
