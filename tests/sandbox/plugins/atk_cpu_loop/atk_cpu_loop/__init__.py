"""Hostile test plugin: Spins forever."""

class Plugin:
    def handle(self, request):
        while True:
            pass
