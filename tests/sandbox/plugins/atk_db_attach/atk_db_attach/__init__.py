"""Hostile test plugin: Makes the host-side ctx.db ATTACH (and so create) a database file anywhere."""

class Plugin:
    def setup(self, ctx):
        self.db = ctx.db

    def handle(self, request):
        self.db.execute("ATTACH DATABASE ? AS evil", [request["path"]])
        self.db.execute("CREATE TABLE evil.pwned (x)")
        return "attached"
