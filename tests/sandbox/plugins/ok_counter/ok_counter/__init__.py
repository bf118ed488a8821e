"""Benign test plugin: In-memory state across calls."""

class Plugin:
    def __init__(self):
        self.count = 0
        self.seen = []

    def handle(self, request):
        self.count += request.get("by", 1)
        self.seen.append(request.get("by", 1))
        return {"count": self.count, "seen": list(self.seen)}
