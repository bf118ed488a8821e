"""plugvisor: run untrusted Python plugins in a sandbox and hot-swap their versions."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
