"""Benign test plugin: the modules only ``trusted`` allows (ssl, http.client, urllib.request)."""

import http.client
import ssl
import urllib.request


class Plugin:
    def handle(self, request):
        req = urllib.request.Request("http://127.0.0.1/x", method="HEAD")
        return {
            "ssl": ssl.OPENSSL_VERSION.split()[0],
            "status": http.client.responses[404],
            "method": req.get_method(),
        }
