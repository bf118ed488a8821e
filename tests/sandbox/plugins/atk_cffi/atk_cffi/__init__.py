"""Hostile test plugin: Calls libc system() through cffi."""

class Plugin:
    def handle(self, request):
        import cffi
        ffi = cffi.FFI()
        ffi.cdef("int system(const char *command);")
        libc = ffi.dlopen(None)
        rc = libc.system(("/usr/bin/touch " + request["canary"]).encode())
        if rc != 0:
            raise OSError("system() returned %d" % rc)
        return rc
