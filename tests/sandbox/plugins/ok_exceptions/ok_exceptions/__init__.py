"""Benign test plugin: Exceptions raised and caught inside the plugin, with traceback formatting."""

import traceback


class AppError(Exception):
    def __init__(self, code):
        super().__init__("app error %d" % code)
        self.code = code


class Plugin:
    def handle(self, request):
        if "reject" in request:
            # An honest refusal of bad input: uncaught, it becomes plugin.error.
            raise ValueError("bad input: %s" % request["reject"])
        out = {}
        try:
            1 / 0
        except ZeroDivisionError as exc:
            out["zero"] = type(exc).__name__
            out["formatted"] = traceback.format_exception(exc)[-1].strip()
            out["format_exc_last"] = traceback.format_exc().strip().splitlines()[-1]
        try:
            {}["k"]
        except KeyError as exc:
            out["key"] = repr(exc)
        try:
            int("x")
        except ValueError as exc:
            out["value"] = str(exc)
        try:
            raise AppError(7)
        except AppError as exc:
            out["app"] = [exc.code, str(exc)]
        try:
            try:
                raise ValueError("inner")
            except ValueError as inner:
                raise RuntimeError("outer") from inner
        except RuntimeError as exc:
            out["chain"] = [str(exc), str(exc.__cause__)]
        steps = []
        try:
            try:
                steps.append("try")
                raise LookupError("x")
            finally:
                steps.append("finally")
        except LookupError:
            steps.append("caught")
        out["steps"] = steps
        try:
            raise ExceptionGroup("many", [ValueError("a"), TypeError("b")])
        except* ValueError as group:
            out["group_value"] = len(group.exceptions)
        except* TypeError as group:
            out["group_type"] = len(group.exceptions)
        try:
            "abc".missing_method()
        except AttributeError as exc:
            out["attr"] = type(exc).__name__
        return out
