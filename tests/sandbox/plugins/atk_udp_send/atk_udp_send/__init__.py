"""Hostile test plugin: Sends a UDP datagram to 127.0.0.1."""

class Plugin:
    def handle(self, request):
        import socket
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.sendto(b"hello from the sandbox", ("127.0.0.1", request["port"]))
        sock.close()
        return "sent"
