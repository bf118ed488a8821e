"""Property-based run of the API against its own OpenAPI document (schemathesis, loopback).

The app is served over real HTTP on 127.0.0.1 (werkzeug in a thread) over the state dir
of a real daemon serving "greeter" (so health is 200 and calls reach a plugin), with a
version held for review and another plugin recorded. Every operation of
``/api/openapi.json`` is exercised with positive and negative data under a small,
bounded budget, with all of schemathesis' checks: no 5xx, documented status codes,
content types and headers, bodies that validate against the documented schemas,
invalid input refused, valid input accepted, auth enforced.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="!!! schemathesis missing: pip install -e .[dev] !!!"
)
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402 -- after the loud skip
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from plugvisor.state.registry import VersionStatus  # noqa: E402
from plugvisor.state.tokens import Role  # noqa: E402
from plugvisor.tests.support.apikit import ApiKit, LiveServer  # noqa: E402

#: Generated cases per operation and mode: the whole run stays well under a minute.
MAX_EXAMPLES = 30
#: One request may take this long (seconds) before it counts as a failure.
REQUEST_BUDGET_S = 5.0
#: The whole run's bound (seconds).
RUN_BUDGET_S = 75.0
#: Operations whose schema-valid bodies can still be refused with 400 for their content,
#: which JSON Schema cannot express: a "public_key" string that is not an Ed25519 PEM.
_SEMANTIC_400 = {"POST /api/keys"}


def _run_operation(operation: Any, mode: Any, auth: dict[str, str]) -> None:
    """Hypothesis over one operation's generated cases; each checked by schemathesis."""
    excluded = [positive_data_acceptance] if operation.label in _SEMANTIC_400 else []

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,  # a job start commits to SQLite and publishes: not the property
        derandomize=True,  # the same cases every run: a failure here is reproducible
        database=None,
        # Generated cases only: no shrinking (the report names the case), and no explicit
        # phase, whose schema examples schemathesis 4.32 labels "negative body" while
        # sending the valid example (a false ST201 on the upload form).
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        started = time.monotonic()
        case.call_and_validate(headers=auth, excluded_checks=excluded)
        took = time.monotonic() - started
        assert took < REQUEST_BUDGET_S, f"{case.method} {case.formatted_path} took {took:.1f} s"

    run()


def test_api_conforms_to_its_openapi_document(daemon_kit: Any) -> None:
    """No 5xx, documented statuses and bodies, invalid input refused: every operation."""
    # A real daemon serves "greeter", so /api/health is 200 and calls reach a plugin.
    daemon_kit.add_version("greeter", "1.0.0", activate=True)
    daemon_kit.start()
    kit = ApiKit.create(root=daemon_kit.root, broker_polling_interval=0.01)
    kit.add_version("greeter", "1.1.0", VersionStatus.review)
    kit.add_version("example", "0.1.0")
    auth = kit.auth(Role.ADMIN)
    failures: list[str] = []
    seen: dict[str, set[str]] = {}
    started = time.monotonic()
    try:
        with LiveServer(kit.app) as server:
            schema = schemathesis.openapi.from_url(f"{server.url}/api/openapi.json", headers=auth)
            schema.config.update(base_url=server.url, request_timeout=10)
            # schemathesis' own pytest loader (from_fixture) breaks on pytest 9: its
            # per-operation Hypothesis strategies are the stable Python API, driven here.
            for mode in (
                schemathesis.GenerationMode.POSITIVE,
                schemathesis.GenerationMode.NEGATIVE,
            ):
                for result in schema.get_all_operations():
                    operation = result.ok()
                    try:
                        _run_operation(operation, mode, auth)
                    except Unsatisfiable:
                        # Nothing in this operation can be made invalid (no parameters,
                        # free-form strings only): there is no negative case to send.
                        assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
                        continue
                    except (Exception, BaseExceptionGroup) as exc:  # report every operation
                        failures.append(f"[{mode.value}] {operation.label}: {exc}")
                    seen.setdefault(mode.value, set()).add(operation.label)
    finally:
        kit.close()
    took = time.monotonic() - started
    assert len(seen["positive"]) >= 17, f"only {sorted(seen['positive'])} exercised"
    assert len(seen.get("negative", ())) >= 8, f"negative cases only for {seen.get('negative')}"
    assert not failures, "\n\n".join(failures)
    assert took < RUN_BUDGET_S, f"the run took {took:.0f} s; lower MAX_EXAMPLES"
