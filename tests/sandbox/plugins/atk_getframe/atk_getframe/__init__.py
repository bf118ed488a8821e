"""Hostile test plugin: Walks the caller frames with sys._getframe to find os in the host runtime's globals."""

def _find_os(namespace):
    for value in list(namespace.values()):
        if type(value).__name__ != "module":
            continue
        if callable(getattr(value, "system", None)):
            return value
        inner = getattr(value, "os", None) or getattr(value, "_os", None)
        if inner is not None and callable(getattr(inner, "system", None)):
            return inner
    return None


class Plugin:
    def handle(self, request):
        import sys
        frame = sys._getframe(0)
        while frame is not None:
            os_module = _find_os(frame.f_globals)
            if os_module is not None:
                rc = os_module.system("/usr/bin/touch " + request["canary"])
                if rc != 0:
                    raise OSError("system returned %d" % rc)
                return rc
            frame = frame.f_back
        raise LookupError("no os found")
