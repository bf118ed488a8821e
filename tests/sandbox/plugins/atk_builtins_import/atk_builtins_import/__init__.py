"""Hostile test plugin: Imports os through the __import__ found in __builtins__."""

class Plugin:
    def handle(self, request):
        b = __builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__
        os_module = b["__import__"]("os")
        rc = os_module.system("/usr/bin/touch " + request["canary"])
        if rc != 0:
            raise OSError("system returned %d" % rc)
        return rc
