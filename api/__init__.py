"""plugvisor's HTTP API and admin page (Flask).

Production: ``gunicorn "plugvisor.api:create_app()"``.
"""

from __future__ import annotations

from plugvisor.api.app import create_app

__all__ = ["create_app"]
