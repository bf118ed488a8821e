"""Hostile test plugin: PTRACE_ATTACH to another process through ctypes."""

class Plugin:
    def handle(self, request):
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.ptrace.restype = ctypes.c_long
        libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
        rc = libc.ptrace(16, request["pid"], None, None)  # PTRACE_ATTACH
        if rc != 0:
            raise OSError(ctypes.get_errno(), "ptrace failed")
        return rc
