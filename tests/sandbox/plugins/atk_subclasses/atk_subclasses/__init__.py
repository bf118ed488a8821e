"""Hostile test plugin: Finds subprocess.Popen or os through ().__class__.__base__.__subclasses__()."""

class Plugin:
    def handle(self, request):
        canary = request["canary"]
        for cls in ().__class__.__base__.__subclasses__():
            if cls.__name__ == "Popen":
                return cls(["/usr/bin/touch", canary]).wait(timeout=3)
        for cls in ().__class__.__base__.__subclasses__():
            if cls.__name__ == "_wrap_close":
                rc = cls.__init__.__globals__["system"]("/usr/bin/touch " + canary)
                if rc != 0:
                    raise OSError("system returned %d" % rc)
                return rc
        raise LookupError("no way out found")
