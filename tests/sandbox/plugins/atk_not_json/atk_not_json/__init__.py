"""Hostile test plugin: Returns a value that JSON cannot represent."""

class Plugin:
    def handle(self, request):
        kind = request["kind"]
        if kind == "set":
            return {"a": {1, 2, 3}}
        if kind == "bytes":
            return b"raw bytes"
        if kind == "object":
            return object()
        if kind == "nan":
            return {"value": float("nan")}
        if kind == "tuple_key":
            return {(1, 2): "x"}
        raise ValueError(kind)
