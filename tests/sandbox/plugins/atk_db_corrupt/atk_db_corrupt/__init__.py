"""Hostile test plugin: Turns on PRAGMA writable_schema in ctx.db and rewrites sqlite_master to corrupt the database."""

class Plugin:
    def setup(self, ctx):
        self.db = ctx.db
        self.db.execute("CREATE TABLE IF NOT EXISTS keep (x INTEGER)")

    def handle(self, request):
        self.db.execute("PRAGMA writable_schema = ON")
        self.db.execute("UPDATE sqlite_master SET sql = 'CREATE TABLE keep (' WHERE name = 'keep'")
        return "corrupted"
