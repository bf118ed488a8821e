"""The demo plugin: says hello and counts greetings per name in its own database."""

VERSION = "1.0.0"


class Plugin:
    def setup(self, ctx):
        self.db = ctx.db
        self.log = ctx.log
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS greetings (name TEXT PRIMARY KEY, count INTEGER NOT NULL)"
        )
        self.log.info("greeter_ready")  # records are tagged with plugin and version already

    def handle(self, request):
        name = request.get("name", "world")
        # Two queries per request, well inside the profile's budget of 10.
        self.db.execute(
            "INSERT INTO greetings (name, count) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET count = count + 1",
            (name,),
        )
        rows = self.db.execute("SELECT count FROM greetings WHERE name = ?", (name,))
        self.log.info("greeted", name=name, times=rows[0][0])
        return {"greeting": f"Hello, {name}!", "version": VERSION}

    def health(self):
        return True
