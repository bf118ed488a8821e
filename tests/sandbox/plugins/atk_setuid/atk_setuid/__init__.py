"""Hostile test plugin: os.setuid(0), then writes into a root-only directory."""

class Plugin:
    def handle(self, request):
        import os
        os.setuid(0)
        with open(request["canary"], "w") as fh:
            fh.write("root again")
        return os.getuid()
