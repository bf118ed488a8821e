"""Hostile test plugin: Reads every file descriptor 0..1023 looking for inherited data."""

class Plugin:
    def handle(self, request):
        import os
        import stat
        found = []
        for fd in range(1024):
            try:
                mode = os.fstat(fd).st_mode
            except OSError:
                continue
            try:
                if stat.S_ISREG(mode):
                    data = os.pread(fd, 65536, 0)
                elif stat.S_ISFIFO(mode):
                    blocking = os.get_blocking(fd)
                    os.set_blocking(fd, False)
                    try:
                        data = os.read(fd, 65536)
                    finally:
                        os.set_blocking(fd, blocking)
                else:
                    # Sockets are skipped: reading the host's own channel would break it.
                    continue
            except OSError:
                continue
            found.append([fd, data.decode("latin-1")])
        return found
