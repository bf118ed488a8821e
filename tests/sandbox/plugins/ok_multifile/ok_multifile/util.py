"""Benign test plugin: A package of several files with relative imports and a sub-package."""

def double(x):
    return 2 * x
