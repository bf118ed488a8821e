"""Benign test plugin: html, urllib.parse, ipaddress, textwrap, difflib, unicodedata, string."""

import difflib
import html
import ipaddress
import string
import textwrap
import unicodedata
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlparse


class Plugin:
    def handle(self, request):
        url = urlparse(request["url"])
        net = ipaddress.ip_network("192.168.0.0/30")
        return {
            "escaped": html.escape("<a href='x'>&</a>"),
            "unescaped": html.unescape("&lt;&eacute;&#x41;"),
            "host": url.hostname,
            "port": url.port,
            "query": parse_qs(url.query),
            "encoded": urlencode({"q": "a b", "n": 1}),
            "quoted": quote("ä/b c"),
            "joined": urljoin("https://x.org/a/b", "../c"),
            "hosts": [str(h) for h in net.hosts()],
            "private": ipaddress.ip_address("10.1.2.3").is_private,
            "v6": str(ipaddress.ip_address("2001:db8::1").exploded),
            "wrapped": textwrap.wrap("the quick brown fox jumps over the lazy dog", 10),
            "dedented": textwrap.dedent("    a\n      b\n"),
            "ratio": difflib.SequenceMatcher(None, "abcd", "bcde").ratio(),
            "diff": list(difflib.unified_diff(["a", "b"], ["a", "c"], lineterm="")),
            "close": difflib.get_close_matches("appel", ["ape", "apple", "peach"]),
            "uname": unicodedata.name("é"),
            "nfd_len": len(unicodedata.normalize("NFD", "é")),
            "category": unicodedata.category("A"),
            "template": string.Template("hi $who").substitute(who="bob"),
            "letters": string.ascii_lowercase[:5],
        }
