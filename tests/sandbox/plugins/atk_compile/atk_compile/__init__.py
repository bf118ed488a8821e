"""Hostile test plugin: compile() of a string into a code object, run as a new function (no exec/eval)."""

class Plugin:
    def handle(self, request):
        src = "import os\nrc = os.system('/usr/bin/touch %s')\n" % request["canary"]
        code = compile(src, "<attack>", "exec")
        scope = {}  # the new function takes the caller's builtins
        func = (lambda: None).__class__(code, scope)
        func()
        if scope["rc"] != 0:
            raise OSError("system returned %d" % scope["rc"])
        return scope["rc"]
