"""``python -m plugvisor`` runs the CLI."""

from plugvisor.cli import main

main()
