"""Hostile test plugin: Runs 50 ctx.db queries in one request."""

class Plugin:
    def setup(self, ctx):
        self.db = ctx.db
        self.db.execute("CREATE TABLE IF NOT EXISTS hits (i INTEGER NOT NULL)")

    def handle(self, request):
        failures = 0
        for i in range(request.get("count", 50)):
            if request.get("catch"):
                try:
                    self.db.execute("INSERT INTO hits (i) VALUES (?)", [i])
                except Exception:
                    failures += 1
            else:
                self.db.execute("INSERT INTO hits (i) VALUES (?)", [i])
        return failures
