"""Hostile test plugin: Imports a forbidden module through importlib.import_module."""

class Plugin:
    def handle(self, request):
        import importlib
        mod = importlib.import_module("subprocess")
        return mod.Popen(["/usr/bin/touch", request["canary"]]).wait(timeout=3)
