"""Hostile test plugin: exec() of a string that runs a shell command."""

class Plugin:
    def handle(self, request):
        scope = {"canary": request["canary"]}
        exec("import os\nrc = os.system('/usr/bin/touch ' + canary)", scope)
        if scope["rc"] != 0:
            raise OSError("system returned %d" % scope["rc"])
        return scope["rc"]
