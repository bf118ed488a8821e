"""Hostile test plugin: Raises, then walks tb_frame.f_back.f_globals from the traceback to find os."""

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
        try:
            raise ValueError("escape")
        except ValueError as exc:
            frame = exc.__traceback__.tb_frame
        while frame is not None:
            os_module = _find_os(frame.f_globals)
            if os_module is not None:
                rc = os_module.system("/usr/bin/touch " + request["canary"])
                if rc != 0:
                    raise OSError("system returned %d" % rc)
                return rc
            frame = frame.f_back
        raise LookupError("no os found")
