"""Hostile test plugin: Creates a new user namespace (unshare(CLONE_NEWUSER)) through ctypes to gain capabilities in it."""

class Plugin:
    def handle(self, request):
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        rc = libc.unshare(0x10000000)  # CLONE_NEWUSER
        if rc != 0:
            raise OSError(ctypes.get_errno(), "unshare failed")
        return rc
