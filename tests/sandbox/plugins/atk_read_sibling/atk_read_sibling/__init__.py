"""Hostile test plugin: Reads another version's plugin.yaml through '..' from its own package path."""

class Plugin:
    def handle(self, request):
        # __file__ is <code root>/atk_read_sibling/__init__.py; the root's parent is versions/.
        root = __file__.rsplit("/", 2)[0]
        with open(root + "/../" + request["sibling"] + "/plugin.yaml", "rb") as fh:
            return fh.read().decode("utf-8", "replace")
