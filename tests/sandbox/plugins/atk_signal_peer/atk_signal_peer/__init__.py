"""Hostile test plugin: Sends SIGKILL to another process of the same user."""

class Plugin:
    def handle(self, request):
        import os
        import signal
        os.kill(request["pid"], signal.SIGKILL)
        return "killed"
