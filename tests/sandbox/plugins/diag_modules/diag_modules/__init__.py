"""Diagnostic plugin for the OS-layers-only spawner: which modules its process holds."""

import sys


class Plugin:
    def handle(self, request):
        return sorted(sys.modules)
