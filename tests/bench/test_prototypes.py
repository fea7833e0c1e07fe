"""The issue-12 prototype's measurement (bench/prototype_cost.py --smoke), briefly.

Asserts what must hold whatever the machine's load: every contender measured in every case,
the set-associative table exact (two CPUs sending the same sources at once, read back through
mmap with duplicates merged: every source with exactly its frames), and its replacement rule
keeping repeat senders through a flood of one-packet sources that plain oldest-first loses.
No timing is asserted. The merge of duplicate slots (a race the smoke run rarely makes) is
checked on its own, on rows made here.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench import fill, prototype_cost

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"

root = pytest.mark.root


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("prototype") / "smoke.json"
    run = subprocess.run(
        [PYTHON, "-m", "bench.prototype_cost", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, f"bench.prototype_cost --smoke failed:\n{run.stderr[-4000:]}"
    assert "| new source, full |" in run.stdout
    return json.loads(out.read_text())


@root
def test_every_contender_measured(require_root: None, results: dict) -> None:
    contenders = {prototype_cost.BASELINE, "project", *prototype_cost.VARIANTS}
    for capacity in prototype_cost.SMOKE.capacities:
        cases = (
            "new source, room",
            "new source, full",
            "hot path",
            "flood run, room",
            "flood run, full",
        )
        for case in cases:
            rows = [r for r in results["rows"] if r["case"] == case and r["capacity"] == capacity]
            assert {row["program"] for row in rows} == contenders, case
            for row in rows:
                for figure in ("ns", "empty_ns"):
                    assert math.isfinite(row[figure]["median"]), (case, row["program"])
                    assert row[figure]["median"] > 0, (case, row["program"])
                assert row["added_vs_baseline"]["n"] == prototype_cost.SMOKE.rounds


@root
@pytest.mark.parametrize("layout", prototype_cost.LAYOUTS)
def test_table_is_exact_from_two_cpus(require_root: None, results: dict, layout: str) -> None:
    exact = results["exactness"][layout]
    assert exact["keys_read"] == exact["sources"] == prototype_cost.SMOKE.exact_sources
    assert exact["packets_read"] == exact["frames"]
    assert exact["each_source_exact"]
    assert exact["outcomes"]["lost"] == 0


@root
@pytest.mark.parametrize("layout", prototype_cost.LAYOUTS)
def test_flood_keeps_repeat_senders(require_root: None, results: dict, layout: str) -> None:
    rules = results["protection"][layout]
    kept = rules["one-packet first, then oldest"]
    assert kept["still_present"] == kept["protected"] == prototype_cost.SMOKE.protected
    assert kept["outcomes"]["evicted"] > 0  # the table was full and did evict
    # The same flood under plain oldest-first: the check can tell the difference.
    assert rules["oldest first"]["still_present"] < kept["protected"]


def test_read_merges_duplicates_and_skips_expired() -> None:
    ways, now = 8, 10**12
    rows = np.zeros(2 * ways, prototype_cost.SLOT_DTYPE)
    keys = fill.source_keys(3)
    live = {0: (keys[0], 7, 3), 5: (keys[0], 7, 4), 6: (keys[1], 9, 2), 9: (keys[2], 7, 1)}
    for index, (key, tag, packets) in live.items():
        rows[index] = (tag, now - 5, now - index, packets, 46 * packets, key)
    rows[12] = (11, 1, 1, 5, 230, keys[2])  # last seen a window ago: free
    entries, duplicates = prototype_cost.read_table(rows, ways, now)
    assert duplicates == 1  # slots 0 and 5: one key claimed twice in set 0
    assert sorted(entries["packets"].tolist()) == [1, 2, 7]
    merged = entries[entries["key"] == keys[0]]
    assert merged["packets"].tolist() == [7]
    assert merged["last_seen"].tolist() == [now]
    assert merged["bytes"].tolist() == [46 * 7]
