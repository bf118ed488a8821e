"""Benign test plugin: type(x).__name__, isinstance, getattr and friends on its own objects."""

class Thing:
    """A thing."""

    kind = "thing"

    def __init__(self):
        self.size = 3

    def describe(self):
        return "%s of size %d" % (self.kind, self.size)


class Special(Thing):
    kind = "special"


class Plugin:
    def handle(self, request):
        t = Special()
        setattr(t, "color", request["color"])
        return {
            "type": type(t).__name__,
            "class": t.__class__.__name__,
            "isinstance": [isinstance(t, Thing), isinstance(t, int)],
            "issubclass": issubclass(Special, Thing),
            "getattr": getattr(t, "size"),
            "default": getattr(t, "missing", "none"),
            "hasattr": [hasattr(t, "describe"), hasattr(t, "nope")],
            "method": getattr(t, "describe")(),
            "color": t.color,
            "vars": sorted(vars(t)),
            "dict": t.__dict__,
            "doc": Thing.__doc__,
            "qualname": Thing.describe.__qualname__,
            "mro": [c.__name__ for c in type(True).__mro__],
            "dir": "describe" in dir(t),
            "callable": callable(t.describe),
            "name_of_type": type(request).__name__,
        }
