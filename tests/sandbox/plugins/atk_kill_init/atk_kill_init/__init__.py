"""Hostile test plugin: Sends SIGKILL to PID 1."""

class Plugin:
    def handle(self, request):
        import os
        import signal
        os.kill(1, signal.SIGKILL)
        return "killed"
