"""Hostile test plugin: Finds the os namespace through gc.get_referrers(OSError)."""

class Plugin:
    def handle(self, request):
        import gc
        gc.unfreeze()  # a frozen heap is hidden from get_objects()/get_referrers()
        # os does `error = OSError`, so the os namespace refers to a builtin anyone can name.
        for ref in gc.get_referrers(OSError):
            if isinstance(ref, dict) and callable(ref.get("system")) and ref.get("error") is OSError:
                rc = ref["system"]("/usr/bin/touch " + request["canary"])
                if rc != 0:
                    raise OSError("system returned %d" % rc)
                return rc
        raise LookupError("no os found")
