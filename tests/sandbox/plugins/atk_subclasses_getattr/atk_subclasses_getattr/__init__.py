"""Hostile test plugin: The __subclasses__ walk through getattr() with names built at run time."""

class Plugin:
    def handle(self, request):
        canary = request["canary"]
        base = getattr(getattr((), "__cla" + "ss__"), "__ba" + "se__")
        subs = getattr(base, "__subcla" + "sses__")()
        for cls in subs:
            if cls.__name__ == "_wrap_close":
                glob = getattr(cls.__init__, "__glo" + "bals__")
                rc = glob["sys" + "tem"]("/usr/bin/touch " + canary)
                if rc != 0:
                    raise OSError("system returned %d" % rc)
                return rc
        raise LookupError("no way out found")
