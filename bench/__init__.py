"""plugvisor bench."""
