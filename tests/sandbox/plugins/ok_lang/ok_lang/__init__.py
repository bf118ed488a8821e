"""Benign test plugin: dataclasses, enum, typing, abc, contextlib, copy."""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import enum
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Perm(enum.IntFlag):
    R = 4
    W = 2
    X = 1


@dataclasses.dataclass(frozen=True, order=True)
class Item:
    name: str
    qty: int = 0
    tags: tuple = ()


class Shape(abc.ABC):
    @abc.abstractmethod
    def area(self) -> float: ...


class Square(Shape):
    def __init__(self, side: float) -> None:
        self.side = side

    def area(self) -> float:
        return self.side * self.side


class Pair(NamedTuple):
    a: int
    b: int


class Box(Generic[T]):
    def __init__(self, value: T) -> None:
        self.value = value


@contextlib.contextmanager
def traced(events):
    events.append("enter")
    try:
        yield len(events)
    finally:
        events.append("exit")


class Plugin:
    def handle(self, request):
        items = sorted([Item("b", 2), Item("a", 5)])
        try:
            Shape()
            abstract = "instantiated"
        except TypeError:
            abstract = "refused"
        events = []
        with traced(events) as depth:
            events.append("body %d" % depth)
        original = {"a": [1, [2]]}
        deep = copy.deepcopy(original)
        deep["a"][1].append(3)
        shallow = copy.copy(original)
        with contextlib.suppress(KeyError):
            {}["missing"]
        with contextlib.ExitStack() as stack:
            stack.callback(events.append, "stack closed")
        Dynamic = dataclasses.make_dataclass("Dynamic", [("x", int), ("y", int, dataclasses.field(default=7))])
        try:
            items[0].qty = 1
            frozen = "mutable"
        except dataclasses.FrozenInstanceError:
            frozen = "frozen"
        return {
            "items": [dataclasses.asdict(i) for i in items],
            "replaced": dataclasses.asdict(dataclasses.replace(items[0], qty=9)),
            "frozen": frozen,
            "color": [Color.RED.name, Color(2).name, len(Color)],
            "perm": int(Perm.R | Perm.W),
            "perm_has_x": Perm.X in (Perm.R | Perm.W),
            "abstract": abstract,
            "area": Square(3).area(),
            "pair": Pair(1, 2)._replace(b=5)._asdict(),
            "box": Box[int](4).value,
            "events": events,
            "deep": [original, deep],
            "shallow_same": shallow["a"] is original["a"],
            "dynamic": dataclasses.astuple(Dynamic(1)),
        }
