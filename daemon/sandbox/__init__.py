"""plugvisor daemon/sandbox."""
