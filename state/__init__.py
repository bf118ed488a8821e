"""plugvisor state."""
