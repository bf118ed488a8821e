"""Hostile test plugin: Tries many forbidden routes in a row, catching every refusal, and answers normally."""

class Plugin:
    def handle(self, request):
        canary = request["canary"]
        refused = []

        def attempt(label, func):
            try:
                func()
            except BaseException as exc:  # the point: swallow whatever the sandbox raises
                refused.append([label, type(exc).__name__])

        def run_os():
            import os
            os.system("/usr/bin/touch " + canary)

        def run_subprocess():
            import subprocess
            subprocess.run(["/usr/bin/touch", canary])

        def write_file():
            with open(canary, "w") as fh:
                fh.write("x")

        def run_eval():
            eval("1 + 1")

        def open_socket():
            import socket
            socket.socket()

        attempt("os", run_os)
        attempt("subprocess", run_subprocess)
        attempt("write", write_file)
        attempt("eval", run_eval)
        attempt("socket", open_socket)
        return refused
