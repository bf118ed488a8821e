"""Benign test plugin: csv and io.StringIO on in-memory data."""

import csv
import io


class Plugin:
    def handle(self, request):
        rows = list(csv.DictReader(io.StringIO(request["csv"])))
        total = sum(int(r["qty"]) * float(r["price"]) for r in rows)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["a", "b,c", 'd"e'])
        writer.writerow([1, None, 2.5])
        semicolons = list(csv.reader(io.StringIO("x;y\n1;2\n"), delimiter=";"))
        raw = io.BytesIO()
        raw.write(b"bytes ok")
        return {
            "names": [r["name"] for r in rows],
            "total": round(total, 2),
            "written": out.getvalue(),
            "semicolons": semicolons,
            "bytes": raw.getvalue().decode(),
        }
