"""Hostile test plugin: compile() of a string into a code object, run as a new function (no exec/eval)."""

class Plugin:
    def handle(self, request):
        src = "import os\nos.system('/usr/bin/touch %s')\n" % request["canary"]
        code = compile(src, "<attack>", "exec")
        func = (lambda: None).__class__(code, {"__builtins__": __builtins__})
        func()
        return "ran"
