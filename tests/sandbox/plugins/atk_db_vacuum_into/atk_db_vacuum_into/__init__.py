"""Hostile test plugin: Makes the host-side ctx.db copy the database to any path with VACUUM INTO."""

class Plugin:
    def setup(self, ctx):
        self.db = ctx.db
        self.db.execute("CREATE TABLE IF NOT EXISTS t (x)")

    def handle(self, request):
        self.db.execute("VACUUM INTO ?", [request["path"]])
        return "copied"
