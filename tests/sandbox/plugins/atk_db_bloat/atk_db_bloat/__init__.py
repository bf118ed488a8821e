"""Hostile test plugin: Fills the host-side ctx.db with one recursive INSERT of a gigabyte of random blobs."""

class Plugin:
    def setup(self, ctx):
        self.db = ctx.db
        self.db.execute("CREATE TABLE IF NOT EXISTS junk (b BLOB)")

    def handle(self, request):
        self.db.execute(
            "INSERT INTO junk SELECT randomblob(1000000) FROM "
            "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c LIMIT 1000)"
        )
        return "filled"
