"""A proportion with its uncertainty: k of n, and the Wilson score interval (better than p +- 1.96 se near 0 and 1)."""

from __future__ import annotations

import math

Z95 = 1.959964  # the standard normal's 97.5 % quantile: a two-sided 95 % interval


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for k successes in n trials, p = k / n.

    (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), clipped to [0, 1].

    (0.0, 1.0) for n = 0: nothing measured, nothing known.
    """
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in 0..n, not {k} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def format_share(k: int, n: int) -> str:
    """'k of n (p %, 95 % interval low-high %)'."""
    low, high = wilson_interval(k, n)
    share = 100 * k / n if n else 0.0
    return f"{k} of {n} ({share:.1f} %, 95 % interval {100 * low:.1f}-{100 * high:.1f} %)"
