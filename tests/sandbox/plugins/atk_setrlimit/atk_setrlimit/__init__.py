"""Hostile test plugin: Raises its address-space limit above the hard limit, then allocates 200 MB."""

class Plugin:
    def handle(self, request):
        import resource
        for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
            try:
                resource.setrlimit(limit, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            except (ValueError, OSError):
                pass
        blob = bytearray(200 * 1024 * 1024)
        return len(blob)
