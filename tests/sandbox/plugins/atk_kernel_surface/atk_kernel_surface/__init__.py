"""Hostile test plugin: Reaches kernel interfaces a plugin never needs: io_uring, bpf, perf events, userfaultfd, keyrings (raw syscalls through ctypes)."""

class Plugin:
    def handle(self, request):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        L = ctypes.c_long
        uring_params = ctypes.create_string_buffer(120)
        bpf_attr = ctypes.create_string_buffer(128)
        perf_attr = ctypes.create_string_buffer(128)
        perf_attr[0:8] = (1).to_bytes(4, "little") + (128).to_bytes(4, "little")  # SOFTWARE, size
        perf_attr[40:48] = (0x60).to_bytes(8, "little")  # exclude_kernel | exclude_hv
        calls = {
            "io_uring_setup": (425, L(8), L(ctypes.addressof(uring_params))),
            "bpf": (321, L(0), L(ctypes.addressof(bpf_attr)), L(128)),
            "perf_event_open": (298, L(ctypes.addressof(perf_attr)), L(0), L(-1), L(-1), L(0)),
            "userfaultfd": (323, L(1)),  # UFFD_USER_MODE_ONLY: allowed unprivileged
            "add_key": (248, ctypes.c_char_p(b"user"), ctypes.c_char_p(b"plugvisor-test"),
                        ctypes.c_char_p(b"secret"), L(6), L(-3)),  # the session keyring
        }
        out = {}
        for name, (nr, *args) in calls.items():
            rc = libc.syscall(L(nr), *args)
            out[name] = rc if rc >= 0 else -ctypes.get_errno()
        # File descriptors are left open on purpose: they stay visible from outside.
        if any(v >= 0 for v in out.values()):
            return out
        raise PermissionError("every call refused: %r" % out)
