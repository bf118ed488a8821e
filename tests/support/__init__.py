"""Test rigs shared by the suites and the benchmarks (pip's ``tests/lib`` pattern).

Importable as ``plugvisor.tests.support`` from a checkout (the editable install maps the
repository root to ``plugvisor``); not part of the wheel: nothing in the product imports it.
"""
