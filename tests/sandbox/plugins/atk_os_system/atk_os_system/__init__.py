"""Hostile test plugin: Runs a shell command with os.system."""

class Plugin:
    def handle(self, request):
        import os
        rc = os.system("/usr/bin/touch " + request["canary"])
        if rc != 0:
            raise OSError("os.system returned %d" % rc)
        return rc
