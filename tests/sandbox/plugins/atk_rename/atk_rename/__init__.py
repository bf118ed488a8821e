"""Hostile test plugin: Renames an existing file outside its package (os.rename)."""

class Plugin:
    def handle(self, request):
        import os
        os.rename(request["path"], request["path"] + ".moved")
        return "renamed"
