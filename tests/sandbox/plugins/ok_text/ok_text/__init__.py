"""Benign test plugin: JSON, regular expressions and string methods."""

import json
import re

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


class Plugin:
    def handle(self, request):
        doc = json.loads(request["doc"])
        text = doc["text"]
        words = re.findall(r"[a-z]+", text.lower())
        return {
            "words": len(words),
            "first_sorted": sorted(set(words))[:3],
            "emails": EMAIL.findall(text),
            "squeezed": re.sub(r"\s+", " ", "a  b\t\tc\n d"),
            "dumped": json.dumps({"b": 1, "a": [1, 2]}, sort_keys=True),
            "upper": "straße".upper(),
            "split": "a,b,,c".split(","),
            "named": re.match(r"(?P<key>\w+)=(?P<value>\d+)", "port=8080").groupdict(),
            "title": "hello wide world".title(),
            "centered": "ok".center(6, "*"),
            "formatted": "{:>6.2f}|{:<4}|{:^5}".format(3.14159, "ab", "c"),
        }
