"""Hostile test plugin: Reads another process's memory with process_vm_readv through ctypes."""

class Plugin:
    def handle(self, request):
        import ctypes

        class IoVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.process_vm_readv.restype = ctypes.c_ssize_t
        size = request["len"]
        buf = ctypes.create_string_buffer(size)
        local = IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
        remote = IoVec(request["addr"], size)
        n = libc.process_vm_readv(request["pid"], ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n < 0:
            raise OSError(ctypes.get_errno(), "process_vm_readv failed")
        return buf.raw[:n].decode("latin-1")
