"""The sketch prototype of issue 12 (bench/prototypes/hll_sketch.c, bench/prototypes/hll.py,
bench/sketch_cost.py), at smoke size: the kernel's hash and registers equal numpy's, the
estimates are as accurate as the standard error says, and the union of overlapping "hosts" by
register-wise max is right where the sum of their counts is not. Seeds are fixed; no timing is
asserted.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import sketch_cost
from xdp_ip_counter import sketch as hll


@pytest.fixture(scope="module")
def programs() -> list:
    keep: list = []
    yield keep
    for bpf in keep:
        bpf.cleanup()


@pytest.mark.root
def test_kernel_hash_equals_numpy_hash(require_root: None, programs: list) -> None:
    sample = sketch_cost.random_ipv4(300, seed=3)
    v6 = ["2001:db8::1", "fd00:12::abcd", "2001:db8:ffff:1:2:3:4:5", "::1"]
    checked = sketch_cost.check_hashes(sample, v6, programs)
    assert checked == {"compared": 304, "mismatches": 0}


@pytest.mark.root
def test_kernel_registers_equal_numpy_registers(require_root: None, programs: list) -> None:
    sources = sketch_cost.random_ipv4(2000, seed=4)
    checked = sketch_cost.check_registers(sources, programs)
    assert checked["recorded"] == 2000
    assert checked["registers_differing"] == 0
    assert checked["registers_equal"]


def test_estimate_within_four_standard_errors() -> None:
    rse = hll.relative_standard_error(sketch_cost.P)
    for cardinality, seed in ((1_000, 5), (100_000, 6)):
        sketch = hll.ipv4_sketch(sketch_cost.random_ipv4(cardinality, seed), sketch_cost.P)
        for estimate in (hll.estimate(sketch), hll.estimate_classic(sketch)):
            assert abs(estimate / cardinality - 1) < 4 * rse, (cardinality, estimate)
    assert hll.estimate(np.zeros(1 << sketch_cost.P, np.uint8)) == 0


def test_union_of_overlapping_hosts_by_register_max() -> None:
    sources = sketch_cost.random_ipv4(300_000, seed=8)
    host_a, host_b = sources[:200_000], sources[100_000:]
    a = hll.ipv4_sketch(host_a, sketch_cost.P)
    b = hll.ipv4_sketch(host_b, sketch_cost.P)
    union = hll.union([a, b])
    assert np.array_equal(union, hll.ipv4_sketch(sources, sketch_cost.P))
    assert abs(hll.estimate(union) / 300_000 - 1) < 0.05
    assert hll.estimate(a) + hll.estimate(b) > 1.25 * 300_000
    # The fleet's precision: folding is exact, and the union folds too.
    folded = hll.union([hll.fold(a, sketch_cost.FLEET_P), hll.fold(b, sketch_cost.FLEET_P)])
    assert np.array_equal(folded, hll.ipv4_sketch(sources, sketch_cost.FLEET_P))
    assert abs(hll.estimate_classic(folded) / 300_000 - 1) < 0.05


def test_rank_and_index_at_the_edges() -> None:
    p = sketch_cost.P
    hashes = np.array([0, 1, 1 << (63 - p), (1 << 64) - 1], dtype=np.uint64)
    index, rank = hll.index_and_rank(hashes, p)
    assert index.tolist() == [0, 0, 0, (1 << p) - 1]
    assert rank.tolist() == [64 - p + 1, 64 - p, 1, 1]
