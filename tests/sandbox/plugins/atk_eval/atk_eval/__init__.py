"""Hostile test plugin: eval() of a string that runs a shell command."""

class Plugin:
    def handle(self, request):
        return eval("__import__('os').system('/usr/bin/touch ' + canary)", {"canary": request["canary"]})
