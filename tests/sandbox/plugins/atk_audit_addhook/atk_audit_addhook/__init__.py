"""Hostile test plugin: Installs its own audit hook and replaces sys.audit, then runs os.system."""

class Plugin:
    def handle(self, request):
        import sys
        sys.audit = lambda *args: None
        sys.addaudithook(lambda event, args: None)
        import os
        rc = os.system("/usr/bin/touch " + request["canary"])
        if rc != 0:
            raise OSError("system returned %d" % rc)
        return rc
