"""Hostile test plugin: Reaches the os module through the __globals__ of a stdlib function (random.Random.seed)."""

class Plugin:
    def handle(self, request):
        import random
        os_module = random.Random.seed.__globals__["_os"]
        rc = os_module.system("/usr/bin/touch " + request["canary"])
        if rc != 0:
            raise OSError("system returned %d" % rc)
        return rc
