"""Hostile test plugin: Loads libc through ctypes and calls system()."""

class Plugin:
    def handle(self, request):
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        rc = libc.system(("/usr/bin/touch " + request["canary"]).encode())
        if rc != 0:
            raise OSError("system() returned %d" % rc)
        return rc
