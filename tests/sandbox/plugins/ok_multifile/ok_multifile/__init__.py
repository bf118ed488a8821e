"""Benign test plugin: A package of several files with relative imports and a sub-package."""

from . import sub
from .sub.deep import triple, via_parent
from .util import double


class Plugin:
    def handle(self, request):
        x = request["x"]
        return {
            "double": double(x),
            "triple": triple(x),
            "via_parent": via_parent(x),
            "sub_name": sub.NAME,
            "deep_module": sub.deep.__name__.split(".", 1)[1],
        }
