"""The upload scan: static analysis of an uploaded plugin tree (never imported or run).

A library shared by the workers (upload and audit jobs) and ``plugvisor dev scan``.
"""
