"""Typed messages: each kind checks its fields once and names the one that is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from plugvisor.core.errors import ApiError
from plugvisor.messaging.commands import COMMANDS, Activate, Command, Disable, Rollback, Status
from plugvisor.messaging.jobs import JOBS, AuditJob, ReloadJob, ReviewJob, UploadJob
from plugvisor.messaging.message import MessageFamily


@pytest.mark.parametrize(
    ("family", "kind", "params", "code", "field"),
    [
        (COMMANDS, "activate", {"name": "a"}, "request.missing_field", "version"),
        (COMMANDS, "activate", {"name": "a", "version": 2}, "request.invalid_field", "version"),
        (COMMANDS, "rollback", {"name": "a", "restore_from": []}, "request.invalid_field",
         "restore_from"),
        (COMMANDS, "enable", {}, "request.missing_field", "name"),
        (COMMANDS, "reboot", {}, "request.invalid_field", "kind"),
        (COMMANDS, "status", [], "request.invalid_field", "params"),
        (JOBS, "review", {"name": "a", "version": "1.0.0", "decision": "maybe", "by": "x",
                          "reason": "y"}, "request.invalid_field", "decision"),
        (JOBS, "review", {"name": "a", "version": "1.0.0", "decision": "approve", "by": "x"},
         "request.missing_field", "reason"),
        (JOBS, "audit", {"version": "1.0.0"}, "request.missing_field", "name"),
        (JOBS, "reload", {"name": ""}, "request.invalid_field", "name"),
        (JOBS, "upload", {}, "request.missing_field", "archive"),
        (JOBS, "nope", {}, "request.invalid_field", "kind"),
    ],
)  # fmt: skip
def test_a_refusal_names_the_rule_and_the_field(family, kind, params, code, field) -> None:
    with pytest.raises(ApiError) as info:
        family.parse(kind, params)
    assert info.value.code == code
    assert info.value.details["field"] == field


def test_messages_round_trip_through_their_wire_form() -> None:
    for message in (
        Status(),
        Activate("greeter", "1.2.0"),
        Rollback("greeter", restore_from="/s/data/.restore-greeter-1"),
        Disable("greeter", "too many violations"),
        ReloadJob(name="greeter", requested_by="ops"),
        AuditJob(),
        ReviewJob(name="g", version="1.0.0", decision="reject", by="admin", reason="eval"),
        UploadJob(archive="/s/staging/uploads/x.tar.gz", filename="g-1.0.0.tar.gz"),
    ):
        family = COMMANDS if isinstance(message, Command) else JOBS
        assert family.parse(message.kind, message.to_dict()) == message


def test_every_job_kind_names_its_tasks() -> None:
    assert {cls.kind: cls.tasks for cls in JOBS}["reload"] == (
        "reload_check", "snapshot", "trial", "activate",
    )  # fmt: skip
    assert all(cls.tasks for cls in JOBS)


def test_a_kind_registers_once() -> None:
    family: MessageFamily[Command] = MessageFamily("test")

    @family.register
    @dataclass(frozen=True)
    class Ping(Command):
        kind: ClassVar[str] = "ping"

    with pytest.raises(ValueError, match="already registered"):
        family.register(Ping)
    assert family.kinds() == {"ping"}


def test_the_daemon_refuses_to_start_with_a_command_it_cannot_handle(tmp_path) -> None:
    from plugvisor.core.config import load_settings  # noqa: PLC0415
    from plugvisor.daemon.control import ControlPlane  # noqa: PLC0415

    settings = load_settings({"state_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="no daemon handler for command kinds"):
        ControlPlane(settings, None, {Status: lambda _c: None})  # type: ignore[arg-type]


def test_a_worker_refuses_a_job_task_without_a_body(monkeypatch, tmp_path) -> None:
    from plugvisor.core.config import load_settings  # noqa: PLC0415
    from plugvisor.messaging.celery_app import new_celery  # noqa: PLC0415
    from plugvisor.workers.tasks import register_tasks  # noqa: PLC0415

    monkeypatch.setattr(ReloadJob, "tasks", ("reload_check", "teleport"))
    app = new_celery(load_settings({"state_dir": str(tmp_path)}))
    with pytest.raises(ValueError, match="teleport"):
        register_tasks(app)
