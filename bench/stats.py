"""Summaries of repeated measurements: the median and the spread (min and max) of the rounds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def summary(values: Sequence[float]) -> dict[str, float]:
    """{"median", "min", "max", "n"} of the values (which must not be empty)."""
    if not values:
        raise ValueError("no measurements to summarise")
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "n": len(values),
    }


def ratios(contender: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Round-by-round contender / baseline (both measured in the same round)."""
    if len(contender) != len(baseline):
        raise ValueError("contender and baseline need the same rounds")
    return [c / b if b else float("inf") for c, b in zip(contender, baseline, strict=True)]


def chunk_medians(values: Sequence[float], chunks: int) -> list[float]:
    """The median of each of `chunks` consecutive slices: rounds out of one long series."""
    size = max(len(values) // chunks, 1)
    return [
        float(statistics.median(values[start : start + size]))
        for start in range(0, size * chunks, size)
        if values[start : start + size]
    ]
