"""Benign test plugin: hashlib, hmac, base64, binascii, uuid5, struct."""

import base64
import binascii
import hashlib
import hmac
import struct
import uuid


class Plugin:
    def handle(self, request):
        data = request["data"].encode()
        return {
            "sha256": hashlib.sha256(data).hexdigest(),
            "sha1": hashlib.sha1(data).hexdigest(),
            "blake2b": hashlib.blake2b(data, digest_size=8).hexdigest(),
            "hmac": hmac.new(b"key", data, "sha256").hexdigest(),
            "hmac_eq": hmac.compare_digest("abc", "abc"),
            "b64": base64.b64encode(data).decode(),
            "b64_back": base64.b64decode("aGVsbG8=").decode(),
            "urlsafe": base64.urlsafe_b64encode(bytes([251, 255])).decode(),
            "crc32": binascii.crc32(data),
            "hex": binascii.hexlify(b"\x01\xff").decode(),
            "uuid5": str(uuid.uuid5(uuid.NAMESPACE_DNS, "example.com")),
            "uuid4_version": uuid.uuid4().version,
            "packed": struct.pack(">HI", 1, 2).hex(),
            "unpacked": struct.unpack("<i", b"\xff\xff\xff\xff")[0],
            "calcsize": struct.calcsize("<qd"),
        }
