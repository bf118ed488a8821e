"""Hostile test plugin: eval() of a string that runs a shell command."""

class Plugin:
    def handle(self, request):
        rc = eval("__import__('os').system('/usr/bin/touch ' + canary)", {"canary": request["canary"]})
        if rc != 0:
            raise OSError("system returned %d" % rc)
        return rc
