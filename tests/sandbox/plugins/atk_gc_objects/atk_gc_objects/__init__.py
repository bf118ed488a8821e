"""Hostile test plugin: Finds the os module among gc.get_objects()."""

class Plugin:
    def handle(self, request):
        import gc
        gc.unfreeze()  # a frozen heap is hidden from get_objects()/get_referrers()
        for obj in gc.get_objects():
            if isinstance(obj, dict) and obj.get("__name__") == "os" and "system" in obj:
                rc = obj["system"]("/usr/bin/touch " + request["canary"])
                if rc != 0:
                    raise OSError("system returned %d" % rc)
                return rc
        raise LookupError("no os found")
