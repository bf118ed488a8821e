"""Hostile test plugin: Signals another process through a pidfd (pidfd_open + pidfd_send_signal), not kill()."""

class Plugin:
    def handle(self, request):
        import os
        import signal
        fd = os.pidfd_open(request["pid"])
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return "killed"
