"""plugvisor core."""
