"""Hostile test plugin: Sleeps past the request deadline."""

class Plugin:
    def handle(self, request):
        import time
        time.sleep(request.get("seconds", 60))
        return "woke up"
