"""Benign test plugin: ctx.db: a table created in setup, inserts and selects per request."""

class Plugin:
    def setup(self, ctx):
        self.db = ctx.db
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"
        )

    def handle(self, request):
        for body in request.get("add", []):
            self.db.execute("INSERT INTO notes (body) VALUES (?)", [body])
        rows = self.db.execute("SELECT id, body FROM notes ORDER BY id")
        return {"rows": rows}
