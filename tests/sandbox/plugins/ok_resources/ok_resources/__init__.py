"""Benign test plugin: Reads data files of its own package with importlib.resources."""

import json
from importlib import resources


class Plugin:
    def setup(self, ctx):
        self.table = json.loads(resources.files(__package__).joinpath("data/table.json").read_text("utf-8"))

    def handle(self, request):
        root = resources.files(__package__)
        greeting = root.joinpath("data", "greeting.txt").read_text(encoding="utf-8")
        return {
            "greeting": greeting.strip(),
            "rate": self.table["rates"][request["currency"]],
            "is_file": root.joinpath("data", "greeting.txt").is_file(),
        }
