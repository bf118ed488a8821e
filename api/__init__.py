"""plugvisor api."""
