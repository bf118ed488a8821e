"""Hostile test plugin: Sends SIGKILL to its parent process."""

class Plugin:
    def handle(self, request):
        import os
        import signal
        os.kill(os.getppid(), signal.SIGKILL)
        return "killed"
