"""Benign test plugin: decimal, fractions, statistics, math and a seeded random."""

import array
import cmath
import math
import random
import statistics
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction


class Plugin:
    def handle(self, request):
        data = request["data"]
        cents = Decimal("0.01")
        gross = (Decimal("19.99") * 3 * Decimal("1.19")).quantize(cents, rounding=ROUND_HALF_UP)
        return {
            "decimal_sum": str((Decimal("0.1") + Decimal("0.2")).quantize(cents)),
            "gross": str(gross),
            "fraction": str(Fraction(1, 3) + Fraction(1, 6)),
            "fraction_limit": str(Fraction(3.14159).limit_denominator(100)),
            "mean": statistics.mean(data),
            "median": statistics.median(data),
            "mode": statistics.mode(data),
            "pstdev": statistics.pstdev(data),
            "gcd": math.gcd(84, 36),
            "comb": math.comb(10, 3),
            "isqrt": math.isqrt(10**12 + 1),
            "seeded": random.Random(42).randint(1, 1000),
            "complex": str(cmath.sqrt(-4)),
            "phase": round(cmath.phase(complex(0, 1)), 6),
            "array": array.array("h", [1, -2, 3]).tobytes().hex(),
        }
