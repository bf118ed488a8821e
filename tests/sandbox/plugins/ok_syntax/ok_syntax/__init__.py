"""Benign test plugin: Ordinary Python syntax: match, generators, closures, properties, slots, walrus."""

from dataclasses import dataclass


@dataclass
class Order:
    item: str
    qty: int


class Account:
    __slots__ = ("_balance",)

    def __init__(self, balance):
        self._balance = balance

    @property
    def balance(self):
        return self._balance

    @balance.setter
    def balance(self, value):
        if value < 0:
            raise ValueError("negative")
        self._balance = value

    def __repr__(self):
        return f"Account({self._balance})"


def counter():
    count = 0

    def bump():
        nonlocal count
        count += 1
        return count

    return bump


def chunks(items, size):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def flatten(nested):
    for item in nested:
        if isinstance(item, list):
            yield from flatten(item)
        else:
            yield item


def describe(value):
    match value:
        case Order(item=item, qty=qty) if qty > 3:
            return f"bulk {item}"
        case Order(item=item):
            return f"single {item}"
        case {"kind": kind, **rest}:
            return f"mapping {kind} +{len(rest)}"
        case [first, *others]:
            return f"sequence {first} +{len(others)}"
        case _:
            return "other"


class Plugin:
    def handle(self, request):
        acct = Account(10)
        acct.balance = 25
        try:
            acct.balance = -1
            refused = False
        except ValueError:
            refused = True
        bump = counter()
        bump()
        gen = (x * x for x in range(5))
        squares = list(gen)
        if (n := len(squares)) > 3:
            big = n
        else:
            big = 0
        return {
            "balance": acct.balance,
            "negative_refused": refused,
            "repr": repr(acct),
            "closure": bump(),
            "chunks": list(chunks([1, 2, 3, 4, 5], 2)),
            "flat": list(flatten([1, [2, [3, [4]]], 5])),
            "match": [
                describe(Order("pen", 5)),
                describe(Order("cup", 1)),
                describe({"kind": "k", "a": 1}),
                describe([1, 2, 3]),
                describe(3.5),
            ],
            "walrus": big,
            "squares": squares,
            "sorted": sorted(request["names"], key=lambda s: (len(s), s)),
            "dict_comp": {k: v for k, v in zip("ab", (1, 2))},
            "set_comp": sorted({c for c in "hello"}),
            "fstring": f"{3.14159:.2f}|{'x'!r}|{10:#x}",
            "star": [*range(3), *"ab"],
            "slots_attr": hasattr(acct, "__dict__"),
        }
