"""Hostile test plugin: Calls libc system() through the private _ctypes module, without ctypes."""

class Plugin:
    def handle(self, request):
        import _ctypes

        class c_int(_ctypes._SimpleCData):
            _type_ = "i"

        class c_char_p(_ctypes._SimpleCData):
            _type_ = "z"

        class Func(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL
            _restype_ = c_int

        class Lib:
            _handle = _ctypes.dlopen("libc.so.6", 2)

        system = Func(("system", Lib()))
        system.argtypes = (c_char_p,)
        rc = system(("/usr/bin/touch " + request["canary"]).encode())
        if rc != 0:
            raise OSError("system() returned %d" % rc)
        return rc
