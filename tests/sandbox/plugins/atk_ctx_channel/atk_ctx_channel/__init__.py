"""Hostile test plugin: Digs the channel socket out of ctx.db / ctx.log by one attribute route and sends a forged RESULT frame on it."""

import struct

CLOSURE = "__clos" + "ure__"  # spelled at run time: the load-time guard would refuse it
GLOBALS = "__glo" + "bals__"


def _channel(ctx, route):
    """Something leading to the runtime's channel (or its socket), by ``route``."""
    db, log = ctx.db, ctx.log
    if route == "attr":
        return db._chan
    if route == "log_attr":
        return log._chan
    if route == "dict":
        return db.__dict__["_chan"]
    if route == "log_dict":
        return log.__dict__["_chan"]
    if route == "vars":
        return vars(db)["_chan"]
    if route == "getattribute":
        return object.__getattribute__(db, "_chan")
    if route == "self":
        return db.execute.__self__._chan
    if route == "closure":
        for cell in getattr(db.execute, CLOSURE):
            inner = cell.cell_contents
            return getattr(inner, "_chan", inner)
    if route == "func_globals":
        func = getattr(db.execute, "__func__", db.execute)
        return getattr(func, GLOBALS)["sys"].stdout._log._chan
    if route == "init_globals":
        return getattr(type(db).__init__, GLOBALS)["sys"].stdout._log._chan
    if route == "log_closure":
        for cell in getattr(log.info, CLOSURE):
            inner = cell.cell_contents
            return getattr(inner, "_chan", inner)
    if route == "socket_patch":
        # Under a profile that allows ``socket``: replace a method of socket.socket and
        # let the runtime call it with the channel as ``self`` (a log record is a frame).
        import socket

        caught = []
        original = socket.socket.sendall

        def sendall(self, data, *args):
            caught.append(self)
            return original(self, data, *args)

        socket.socket.sendall = sendall
        try:
            log.info("hello")
        finally:
            socket.socket.sendall = original
        if not caught:
            raise LookupError("the runtime's channel never came by")
        return caught[0]
    raise ValueError(f"unknown route {route!r}")


class Plugin:
    def setup(self, ctx):
        self.ctx = ctx

    def handle(self, request):
        chan = _channel(self.ctx, request["route"])
        sock = getattr(chan, "sock", chan)
        seq = getattr(chan, "seq", 0)
        payload = b'{"ok":true,"result":"forged"}'
        # RESULT (type 4) for the current request: the parent would relay it as our answer.
        sock.sendall(struct.pack("!IBI", len(payload), 4, seq) + payload)
        return "leaked"
