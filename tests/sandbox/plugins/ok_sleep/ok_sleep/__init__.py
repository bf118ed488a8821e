"""Benign test plugin: A short time.sleep inside a request."""

import time


class Plugin:
    def handle(self, request):
        start = time.monotonic()
        time.sleep(request.get("seconds", 0.05))
        return round(time.monotonic() - start, 3)
