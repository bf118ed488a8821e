"""Benign test plugin: A package of several files with relative imports and a sub-package."""

from . import deep

NAME = "sub"
