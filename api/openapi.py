"""One declaration per endpoint drives its auth, its validation and its OpenAPI entry.

:func:`operation` wraps a view: it checks the bearer token's role, validates the JSON
body / query string / multipart form with the declared marshmallow schemas (passing the
loaded values as ``body=``, ``query=``, ``form=``) and records the declaration on the
view. :func:`build_spec` walks the app's URL map and turns those declarations into an
OpenAPI 3.0 document with apispec, so the document is generated from the very schemas
the handlers enforce.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import Schema

from plugvisor import __version__
from plugvisor.api.auth import authorize
from plugvisor.api.schemas import ErrorSchema, load
from plugvisor.core.errors import ApiError
from plugvisor.state.layout import PLUGIN_NAME_RE
from plugvisor.state.tokens import Role

__all__ = ["OPERATION_ATTR", "HeaderDoc", "Operation", "bp", "build_spec", "operation"]

OPERATION_ATTR = "__plugvisor_operation__"
F = TypeVar("F", bound=Callable[..., ResponseReturnValue])
#: A header's documentation: its description, or its description and JSON schema.
HeaderDoc = str | tuple[str, Mapping[str, Any]]
_PATH_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
#: Path arguments with a documented shape (the handlers refuse others); the rest: strings.
_PATH_SCHEMAS: Mapping[str, Mapping[str, Any]] = {
    "name": {"type": "string", "pattern": PLUGIN_NAME_RE.pattern, "description": "Plugin name."},
}


@dataclass(frozen=True)
class Operation:
    """What one endpoint needs and answers; read by the wrapper and by :func:`build_spec`."""

    summary: str
    tag: str
    role: Role | None
    body: type[Schema] | None = None
    query: type[Schema] | None = None
    form: type[Schema] | None = None
    #: status -> (description, schema or None)
    responses: Mapping[int, tuple[str, type[Schema] | None]] = field(default_factory=dict)
    #: A body the handler takes as raw JSON of any shape (plugin calls).
    raw_json_body: bool = False
    #: Headers the endpoint honours, name -> description or (description, JSON schema).
    headers: Mapping[str, HeaderDoc] = field(default_factory=dict)
    description: str = ""


def operation(
    *,
    summary: str,
    tag: str,
    role: Role | None,
    responses: Mapping[int, tuple[str, type[Schema] | None]],
    body: type[Schema] | None = None,
    query: type[Schema] | None = None,
    form: type[Schema] | None = None,
    raw_json_body: bool = False,
    headers: Mapping[str, HeaderDoc] | None = None,
    description: str = "",
) -> Callable[[F], F]:
    """Declare an endpoint: auth by ``role`` (None = public), validation, documentation."""
    op = Operation(
        summary=summary, tag=tag, role=role, body=body, query=query, form=form,
        responses=dict(responses), raw_json_body=raw_json_body, headers=dict(headers or {}),
        description=description,
    )  # fmt: skip
    if sum(x is not None for x in (body, form)) + raw_json_body > 1:
        raise ValueError(f"operation {summary!r}: declare at most one of body, form, raw_json_body")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            if op.role is not None:
                authorize(op.role)
            if op.body is not None:
                kwargs["body"] = load(op.body, _json_body(), "body")
            if op.form is not None:
                data: dict[str, Any] = {**request.form.to_dict(), **request.files.to_dict()}
                kwargs["form"] = load(op.form, data, "form")
            if op.query is not None:
                kwargs["query"] = load(op.query, request.args.to_dict(), "query")
            return view(*args, **kwargs)

        setattr(wrapper, OPERATION_ATTR, op)
        return wrapper  # type: ignore[return-value]

    return decorate


def _json_body() -> Any:
    if not request.is_json:
        raise ApiError(
            "invalid",
            "body must be JSON (Content-Type: application/json)",
            field="body",
        )
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError("invalid", "body is not valid JSON", field="body")
    return data


# ---- the document ------------------------------------------------------------------------
def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of every declared endpoint of ``app``."""
    spec = APISpec(
        title="plugvisor API",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={
            "description": "Upload, reload, roll back and audit sandboxed plugins; "
            "follow jobs; call plugins through the daemon."
        },
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", schema=ErrorSchema)
    paths: dict[str, dict[str, dict[str, Any]]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op = getattr(app.view_functions.get(rule.endpoint), OPERATION_ATTR, None)
        if not isinstance(op, Operation):
            continue
        path = _PATH_ARG.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation_dict(op, rule.arguments)
    for path, ops in paths.items():
        spec.path(path=path, operations=ops)
    return spec.to_dict()


def _operation_dict(op: Operation, path_args: set[str] | frozenset[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    params: list[dict[str, Any]] = [
        {"name": a, "in": "path", "required": True,
         "schema": dict(_PATH_SCHEMAS.get(a, {"type": "string"}))}
        for a in sorted(path_args)
    ]  # fmt: skip
    if op.query is not None:
        params.append({"in": "query", "schema": op.query})
    for name, doc in op.headers.items():
        desc, header_schema = (doc, {"type": "string"}) if isinstance(doc, str) else doc
        params.append(
            {"name": name, "in": "header", "required": False, "schema": dict(header_schema),
             "description": desc}
        )  # fmt: skip
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": op.body}},
        }
    elif op.form is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": op.form}},
        }
    elif op.raw_json_body:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {}}},
            "description": "Any JSON value: the plugin's request.",
        }
    responses: dict[str, Any] = {}
    error_ref = {"application/json": {"schema": "Error"}}
    for status, (desc, schema) in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": desc}
        if schema is not None:
            entry["content"] = {"application/json": {"schema": schema}}
        elif status >= 400:
            entry["content"] = error_ref
        responses[str(status)] = entry
    if op.body is not None or op.form is not None or op.query is not None or op.raw_json_body:
        responses.setdefault(
            "400", {"description": "Invalid request (code request.invalid)", "content": error_ref}
        )
    if op.role is not None:
        out["security"] = [{"bearer": []}]
        out["x-required-role"] = op.role.value
        responses.setdefault(
            "401", {"description": "No or unknown bearer token", "content": error_ref}
        )
        responses.setdefault(
            "403", {"description": f"Role below {op.role.value}", "content": error_ref}
        )
    out["responses"] = responses
    return out


# ---- the endpoint ------------------------------------------------------------------------
bp = Blueprint("openapi", __name__)


@bp.get("/api/openapi.json")
@operation(
    summary="This OpenAPI document",
    tag="meta",
    role=Role.VIEWER,
    responses={200: ("OpenAPI 3.0 document", None)},
)
def openapi_json() -> ResponseReturnValue:
    cache = current_app.extensions["plugvisor"].cache
    if "openapi" not in cache:
        cache["openapi"] = build_spec(current_app)
    return jsonify(cache["openapi"])
