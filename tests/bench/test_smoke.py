"""The benchmark harness's smoke run (bench/run.py --smoke): every measurement, briefly.

The full run is not part of the test suite (it takes minutes and wants a quiet machine); this
keeps the harness from rotting. It checks that the run completes, that every measurement the
README table shows is there and sane (every contender measured, nothing counted zero, the
program's reported packets equal to the frames it was given, every entry read back), and that
the Markdown renders. It asserts no timing: the machine may be busy.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from bench import kernel_cost, report, throughput

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    run = subprocess.run(
        [PYTHON, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, f"bench.run --smoke failed:\n{run.stderr[-4000:]}"
    assert "### Targets" in run.stdout
    return json.loads(out.read_text())


def _positive(figure: dict, what: str) -> None:
    for key in ("median", "min", "max"):
        value = figure[key]
        assert math.isfinite(value), f"{what}: {key} is {value}"
        assert value > 0, f"{what}: {key} is {value}"
    assert figure["min"] <= figure["median"] <= figure["max"], what


def test_every_part_ran(require_root: None, results: dict) -> None:
    assert set(results) >= {"meta", "kernel", "throughput", "userspace"}
    assert results["meta"]["smoke"] is True
    assert results["meta"]["kernel"] and results["meta"]["cpu"]


def test_kernel_cost_has_every_case_and_step(require_root: None, results: dict) -> None:
    rows = results["kernel"]["rows"]
    seen = {(row["case"], row["entries"], row["program"]) for row in rows}
    for case in kernel_cost.CASES:
        assert (case, "1", "project") in seen, f"no figure for {case}"
    for step in (
        "parse + port filter + counter",
        "LRU hash per frame (first version)",
        "cache + coarse clock helper",
        "project, BPF_F_NO_COMMON_LRU",
    ):
        assert (kernel_cost.HOT, "1", step) in seen, f"no step {step}"
    for fill in kernel_cost.SMOKE.fills:
        for program in ("project", "LRU hash per frame (first version)"):
            assert (kernel_cost.HOT, f"{fill} others", program) in seen
    for state in ("room", "full"):
        for program in (
            "project",
            "project, BPF_F_NO_COMMON_LRU",
            "LRU hash per frame (first version)",
        ):
            assert ("new source every frame", state, program) in seen
    for row in rows:
        what = f"{row['case']} / {row['entries']} / {row['program']}"
        for figure in ("ns", "empty_ns", "ratio"):
            _positive(row[figure], f"{what}: {figure}")
        assert row["ratio"]["n"] == kernel_cost.SMOKE.rounds


def test_the_program_reports_every_frame_it_was_given(require_root: None, results: dict) -> None:
    counts = results["kernel"]["project_counts"]
    assert set(counts) == {
        kernel_cost.HOT,
        "hot path IPv6",
        "IPv6, 3 extension headers",
        "QinQ IPv4",
    }
    for case, figures in counts.items():
        assert figures["sent"] > 0, case
        assert figures["counted"] == figures["sent"], case


def test_per_cpu_lru_keeps_one_cpus_share(require_root: None, results: dict) -> None:
    kept = results["kernel"]["entries_kept_from_one_cpu"]
    assert 0 < kept["no_common_lru"] <= kept["common_lru"] <= kept["capacity"]
    if kept["cpus"] > 1:
        assert kept["no_common_lru"] <= kept["capacity"] // kept["cpus"] + 64


def test_throughput_measured_every_contender(require_root: None, results: dict) -> None:
    measured = results["throughput"]
    assert set(measured["modes"]) == {"fixed sources", "random sources"}
    for mode, figures in measured["modes"].items():
        assert set(figures["contenders"]) == set(throughput.CONTENDERS), mode
        for name, entry in figures["contenders"].items():
            _positive(entry["pps"], f"{mode}: {name} packets/s")
            _positive(entry["vs_no_program"], f"{mode}: {name} vs no program")
            _positive(entry["vs_nftables"], f"{mode}: {name} vs nftables")
            if name.startswith(("empty XDP", "project")):
                _positive(entry["vs_empty_same_mode"], f"{mode}: {name} vs empty")
    assert measured["project_frames_recorded"] > 0
    assert measured["project_new_sources"] > 0


def test_userspace_read_and_served_every_entry(require_root: None, results: dict) -> None:
    userspace = results["userspace"]
    entries = userspace["config"]["entries"]
    assert userspace["active_sources"] == entries
    assert userspace["refresh_parts"]["rows"] == entries
    assert userspace["refresh_parts"]["stale"] == 0
    _positive(userspace["refresh"], "refresh")
    for state in ("during_refreshes", "without_refreshes"):
        latency = userspace["metrics"][state]
        assert latency["requests"] > 0, state
        assert latency["failures"] == 0, state
        _positive(latency["p99_s"], f"/metrics p99 {state}")
    assert userspace["metrics"]["during_refreshes"]["refreshes_meanwhile"] > 0
    for read in userspace["list"]:
        assert read["status"] == 200
        assert read["rows"] == entries
    assert userspace["entries_after_expiry"] == 0
    _positive(userspace["startup"]["to_ready_s"], "start-up")
    _positive(userspace["startup"]["rss_when_ready_mb"], "RSS when ready")
    for name, value in userspace["rss_mb"].items():
        assert value > 0, name


def test_markdown_names_every_target(require_root: None, results: dict) -> None:
    text = report.markdown(results)
    names = [target.name for target in report.targets(results)]
    assert len(names) >= 12
    for name in names:
        assert name in text
