"""Hostile test plugin: Starts a program with os.posix_spawn."""

class Plugin:
    def handle(self, request):
        import os
        pid = os.posix_spawn("/usr/bin/touch", ["touch", request["canary"]], {})
        return os.waitpid(pid, 0)[1]
