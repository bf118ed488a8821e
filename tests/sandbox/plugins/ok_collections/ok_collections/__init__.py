"""Benign test plugin: collections, itertools, functools, operator, heapq, bisect."""

import bisect
import functools
import heapq
import itertools
import operator
from collections import ChainMap, Counter, OrderedDict, defaultdict, deque, namedtuple

Point = namedtuple("Point", "x y")


@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Plugin:
    def handle(self, request):
        words = request["words"]
        by_letter = defaultdict(list)
        for w in words:
            by_letter[w[0]].append(w)
        window = deque(range(5), maxlen=3)
        window.rotate(1)
        ordered = OrderedDict.fromkeys("bca")
        ordered.move_to_end("b")
        scores = [5, 1, 8, 3, 9, 2]
        heap = list(scores)
        heapq.heapify(heap)
        sorted_list = [1, 3, 5, 7]
        bisect.insort(sorted_list, 4)
        local_point = namedtuple("LocalPoint", ["a", "b"])(1, 2)
        return {
            "common": Counter(words).most_common(2),
            "by_letter": {k: v for k, v in sorted(by_letter.items())},
            "window": list(window),
            "ordered": list(ordered),
            "chain": ChainMap({"a": 1}, {"a": 2, "b": 3})["a"],
            "pairs": list(itertools.combinations("abc", 2)),
            "accumulate": list(itertools.accumulate([1, 2, 3, 4])),
            "grouped": [[k, len(list(g))] for k, g in itertools.groupby("aaabbc")],
            "product": functools.reduce(operator.mul, range(1, 6)),
            "fib": fib(60),
            "partial": functools.partial(int, base=2)("1011"),
            "smallest": heapq.nsmallest(3, scores),
            "heap_pop": heapq.heappop(heap),
            "bisect": bisect.bisect_left([1, 3, 5, 7], 5),
            "insorted": sorted_list,
            "point": Point(3, 4)._asdict(),
            "local_point": local_point.b,
            "itemgetter": sorted([[2, "b"], [1, "a"]], key=operator.itemgetter(0)),
        }
