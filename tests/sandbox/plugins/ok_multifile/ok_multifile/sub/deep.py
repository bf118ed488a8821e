"""Benign test plugin: A package of several files with relative imports and a sub-package."""

from ..util import double


def triple(x):
    return 3 * x


def via_parent(x):
    return double(x) + 1
