"""Hostile test plugin: Starts a program with subprocess.Popen."""

class Plugin:
    def handle(self, request):
        import subprocess
        proc = subprocess.Popen(["/usr/bin/touch", request["canary"]])
        return proc.wait(timeout=3)
