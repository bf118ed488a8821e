"""Hostile test plugin: Never finishes importing (a loop at module level)."""

while True:
    pass


class Plugin:
    def handle(self, request):
        return "unreachable"
