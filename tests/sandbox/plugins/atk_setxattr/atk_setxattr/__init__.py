"""Hostile test plugin: Sets an extended attribute on a file outside its package (os.setxattr)."""

class Plugin:
    def handle(self, request):
        import os
        os.setxattr(request["path"], "user.plugvisor_test", b"tampered")
        return "tagged"
