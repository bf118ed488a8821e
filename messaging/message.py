"""The base of every typed message: a frozen dataclass with one ``from_dict``.

Each message kind (a job kind, a control command) is one subclass with a unique ``kind``;
``from_dict`` is the one place its fields are checked, and a refusal is
``ApiError("invalid_field", ..., field=NAME)`` naming the field. Subclasses register
themselves by ``kind`` in their family's table (:class:`MessageFamily`), so adding a
kind is one class, and its handler is looked up by the class.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Generic, TypeVar

from plugvisor.core.errors import ApiError

__all__ = ["Message", "MessageFamily", "optional_str", "required_str"]

M = TypeVar("M", bound="Message")


@dataclass(frozen=True)
class Message:
    """A typed message; subclasses set ``kind`` and define ``from_dict``."""

    kind: ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[M], data: Mapping[str, Any]) -> M:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The message's fields as JSON-ready values (what ``from_dict`` reads back)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


class MessageFamily(Generic[M]):
    """The kinds of one family (job kinds, control commands), each class once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._by_kind: dict[str, type[M]] = {}

    def register(self, cls: type[M]) -> type[M]:
        """Class decorator: add ``cls`` under its ``kind`` (refused twice or empty)."""
        if not cls.kind or cls.kind in self._by_kind:
            raise ValueError(f"{self.name} kind {cls.kind!r} of {cls.__name__} is empty "
                             "or already registered")  # fmt: skip
        self._by_kind[cls.kind] = cls
        return cls

    def get(self, kind: str) -> type[M]:
        """The class of ``kind`` (``KeyError`` for an unknown one: a bug, not input)."""
        return self._by_kind[kind]

    def kinds(self) -> frozenset[str]:
        return frozenset(self._by_kind)

    def __iter__(self) -> Iterator[type[M]]:
        return iter(self._by_kind.values())

    def parse(self, kind: Any, params: Mapping[str, Any] | Any) -> M:
        """The message of ``kind`` built from ``params``; ``ApiError`` naming what is wrong."""
        cls = self._by_kind.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ApiError(
                "invalid_field", f"{self.name} kind {kind!r} is not one of "
                f"{sorted(self._by_kind)}", field="kind", kind=str(kind),
            )  # fmt: skip
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ApiError("invalid_field", f"{self.name} params must be an object",
                           field="params")  # fmt: skip
        return cls.from_dict(params)


def required_str(data: Mapping[str, Any], key: str, what: str = "") -> str:
    """``data[key]`` as a non-empty string.

    Absent or null: ``ApiError("missing_field")``; anything else that is not a non-empty
    string: ``ApiError("invalid_field")``. Both name the field.
    """
    value = data.get(key)
    if value is None:
        raise ApiError("missing_field", f"{key} is required" + (f" ({what})" if what else ""),
                       field=key)  # fmt: skip
    if not isinstance(value, str) or not value:
        raise ApiError("invalid_field", f"{key} must be a non-empty string"
                       + (f" ({what})" if what else ""), field=key)  # fmt: skip
    return value


def optional_str(data: Mapping[str, Any], key: str, what: str = "") -> str | None:
    """``data[key]`` as a non-empty string, or None when absent or null."""
    if data.get(key) is None:
        return None
    return required_str(data, key, what)
