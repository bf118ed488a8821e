"""plugvisor daemon."""
