"""``python -m bench`` / ``python -m plugvisor.bench``: every benchmark, one table."""

from __future__ import annotations

from plugvisor.bench.runner import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
