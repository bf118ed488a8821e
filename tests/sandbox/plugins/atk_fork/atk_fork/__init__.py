"""Hostile test plugin: os.fork(); the child creates a canary file and stays alive for a while."""

class Plugin:
    def handle(self, request):
        import os
        import time
        pid = os.fork()
        if pid == 0:
            try:
                open(request["canary"], "w").close()
                time.sleep(3)
            finally:
                os._exit(0)
        return pid
