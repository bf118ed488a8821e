"""Hostile test plugin: Connects to a Unix socket on the file system (such as a daemon's control socket)."""

class Plugin:
    def handle(self, request):
        import socket
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(2)
        sock.connect(request["path"])
        sock.sendall(b"hello from the sandbox")
        sock.close()
        return "connected"
