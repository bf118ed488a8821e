"""Hostile test plugin: Replaces the host process with a program through os.execv."""

class Plugin:
    def handle(self, request):
        import os
        os.execv("/usr/bin/touch", ["touch", request["canary"]])
