"""Hostile test plugin: Commits thousands of caught violations in one request to flood the security log."""

class Plugin:
    def handle(self, request):
        caught = 0
        for i in range(request.get("count", 2000)):
            try:
                eval("%d + 1" % i)
            except Exception:
                caught += 1
        return caught
