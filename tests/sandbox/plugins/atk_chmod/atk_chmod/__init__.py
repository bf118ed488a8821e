"""Hostile test plugin: Changes the mode of a file outside its package that the sandbox user owns (os.chmod)."""

class Plugin:
    def handle(self, request):
        import os
        os.chmod(request["path"], 0o777)
        return "chmodded"
