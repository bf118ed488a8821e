"""plugvisor workers."""
