"""Hostile test plugin: Steals a file descriptor from another process (pidfd_getfd) and writes through it."""

class Plugin:
    def handle(self, request):
        import ctypes
        import os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        pidfd = os.pidfd_open(request["pid"])
        stolen = libc.syscall(ctypes.c_long(438), ctypes.c_long(pidfd), ctypes.c_long(request["fd"]), ctypes.c_long(0))
        if stolen < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd failed")
        os.write(stolen, b"stolen by the sandbox\n")
        return stolen
