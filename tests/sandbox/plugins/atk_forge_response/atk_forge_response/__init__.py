"""Hostile test plugin: Subverts its own runtime (real getattr via typing, then sys.modules['json']) so the response frame is not JSON."""

import typing


def _real_getattr():
    def probe(x: "getattr"):
        pass

    return typing.get_type_hints(probe, globalns={})["x"]


class Plugin:
    def handle(self, request):
        real_getattr = _real_getattr()
        subclasses = real_getattr(object, "__subc" + "lasses__")()
        wrap_close = [c for c in subclasses if c.__name__ == "_wrap_close"][0]
        modules = real_getattr(wrap_close.__init__, "__glo" + "bals__")["sys"].modules
        forged = request["forged"]
        # The runtime encodes the result with json.dumps after handle() returns.
        modules["json"].dumps = lambda *args, **kwargs: forged
        return {"harmless": True}
