"""Structured logging: configured once per entry point, JSON lines by default.

Call :func:`configure_logging` from each process's main (daemon, Celery's
``worker_process_init``, ``create_app``, the CLI). Everything else takes a logger from
:func:`get_logger` and binds context (plugin, version, job_id, request_id).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO


def _import_structlog() -> Any:
    """``import structlog`` without letting it pull in rich.

    structlog.dev imports rich (installed as a Bandit dependency) at import time, only to
    offer rich tracebacks in console mode; that is megabytes of RSS in the daemon and
    every API worker (tests/unit/test_import_footprint.py keeps it out) for a feature the
    JSON logs never use. rich is hidden for the duration of the import only (console
    mode then prints plain tracebacks); a process that already imported rich, or
    imports it later (the scanner's Bandit), is unaffected.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog  # noqa: PLC0415

        return structlog
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` fail
    try:
        import structlog  # noqa: PLC0415
    finally:
        del sys.modules["rich"]
    return structlog


if TYPE_CHECKING:
    import structlog
else:
    structlog = _import_structlog()

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    component: str = "cli",
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging to one stream as JSON lines (or console text)."""
    lvl = _LEVELS.get(level.lower(), logging.INFO)
    out = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _add_component(component),
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries (Celery, kombu, gunicorn) log through stdlib logging:
    # render their records the same way.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.INFO) if lvl < logging.INFO else lvl)


def _add_component(component: str) -> Any:
    def processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("component", component)
        return event

    return processor


def get_logger(name: str | None = None, **bound: Any) -> Any:
    """A structlog logger with ``bound`` context (plugin=..., job_id=...)."""
    log = structlog.get_logger(name)
    return log.bind(**bound) if bound else log
