"""Hostile test plugin: Opens a TCP connection to 127.0.0.1."""

class Plugin:
    def handle(self, request):
        import socket
        conn = socket.create_connection(("127.0.0.1", request["port"]), timeout=2)
        conn.sendall(b"hello from the sandbox")
        conn.close()
        return "connected"
