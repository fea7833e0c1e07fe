"""The benchmark harness's smoke run (bench/run.py --smoke): every measurement, briefly.

The full run is not part of the test suite (it takes minutes and wants a quiet machine); this
keeps the harness from rotting. It checks that the run completes, that every measurement the
README table shows is there and sane (every contender measured in every case, the flood runs
included, nothing counted zero, the product's reported packets equal to the frames it was
given, every entry read back, the kernel's sketch registers equal to the daemon's mirror), and
that the Markdown renders. It asserts no timing: the machine may be busy.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from bench import kernel_cost, report, sketch_accuracy, throughput

REPO = Path(__file__).resolve().parents[2]
FIRST = kernel_cost.FIRST
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
    assert set(results) >= {"meta", "kernel", "throughput", "userspace", "sketch"}
    assert results["meta"]["smoke"] is True
    assert results["meta"]["kernel"] and results["meta"]["cpu"]


def test_kernel_cost_has_every_case_and_step(require_root: None, results: dict) -> None:
    rows = results["kernel"]["rows"]
    seen = {(row["case"], row["entries"], row["program"]) for row in rows}
    for case in kernel_cost.CASES:
        assert (case, "1", kernel_cost.PROJECT) in seen, f"no figure for {case}"
        assert (case, "1", kernel_cost.LISTED) in seen, f"no figure for {case} with the lists"
    for step in kernel_cost.STEPS:
        assert (kernel_cost.HOT, "1", step) in seen, f"no step {step}"
    for fill in kernel_cost.SMOKE.fills:
        for program in (kernel_cost.PROJECT, kernel_cost.FIRST):
            assert (kernel_cost.HOT, f"{fill} others", program) in seen
    for state in ("room", "full"):
        for program in (kernel_cost.PROJECT, kernel_cost.FIRST):
            assert (kernel_cost.NEW_SOURCE, state, program) in seen
    with_first = {(row["case"], row["entries"]) for row in rows if row["program"] == FIRST}
    for row in rows:
        what = f"{row['case']} / {row['entries']} / {row['program']}"
        figures = ["ns", "empty_ns", "ratio"]
        if (row["case"], row["entries"]) in with_first:
            figures.append("to_first_version")
            # (contender - empty) / (first version - empty): finite, of either sign in noise
            assert math.isfinite(row["added_vs_first_version"]["median"]), what
        for figure in figures:
            _positive(row[figure], f"{what}: {figure}")
        assert row["ratio"]["n"] == kernel_cost.SMOKE.rounds
    full = results["kernel"]["at_scale_entries"]
    # "Full": every slot live, 1.5 per entry of max_entries
    assert full[kernel_cost.PROJECT] == results["kernel"]["slots"][kernel_cost.PROJECT]
    assert 0 < full[kernel_cost.FIRST] <= kernel_cost.SMOKE.capacity


def test_flood_run_has_every_contender(require_root: None, results: dict) -> None:
    kernel = results["kernel"]
    seen = {(r["capacity"], r["table"], r["program"]) for r in kernel["flood"]}
    for capacity in kernel_cost.SMOKE.flood_capacities:
        for table in ("room", "full"):
            for program in kernel_cost.FLOOD_CONTENDERS:
                assert (capacity, table, program) in seen, (capacity, table, program)
    for row in kernel["flood"]:
        what = f"flood {row['capacity']} {row['table']} {row['program']}"
        for figure in ("ns", "empty_ns", "ratio", "to_first_version"):
            _positive(row[figure], f"{what}: {figure}")
        added = row["added_vs_first_version"]
        assert math.isfinite(added["median"]), what
        assert added["n"] == kernel_cost.SMOKE.rounds, what
        assert row["frames_per_run"] > 0, what


def test_flood_run_records_every_new_source(require_root: None, results: dict) -> None:
    for capacity, checks in results["kernel"]["flood_checks"].items():
        room, full = checks["room"], checks["full"]
        # Every frame of the flood run was a new source, and the product took each one in.
        assert room["recorded_new"] == room["frames_given"] > 0, capacity
        assert full["recorded_new"] == full["frames_given"] > 0, capacity
        # Full: every new source gave up a live entry, and the table stayed full.
        assert full["evicted"] == full["frames_given"], capacity
        assert full["live_entries"] == checks["slots"], capacity
        # With the budget, each new source either took a slot or was not admitted.
        for budgeted in (checks["room_budgeted"], checks["full_budgeted"]):
            admitted = budgeted.get("recorded_new", 0)
            assert admitted + budgeted.get("not_admitted", 0) == budgeted["frames_given"] > 0
            assert admitted > 0, capacity
        assert checks["first_version_entries"] > 0, capacity
        # Exact below capacity: a table filled up to max_entries lost no source.
        assert [row["load"] for row in checks["losses"]] == list(kernel_cost.SMOKE.loads)
        for row in checks["losses"]:
            assert row["sources"] == round(row["load"] * int(capacity)) > 0, (capacity, row)
            assert (row["lost"], row["evicted"], row["insert_failed"]) == (0, 0, 0), row


def test_each_frame_does_what_its_case_says(require_root: None, results: dict) -> None:
    """The ICMP echo request is recorded only where ICMP is; the excluded source is excluded
    only where the lists are; the other frames the same with and without them."""
    outcomes = results["kernel"]["case_outcomes"]
    project, listed = outcomes[kernel_cost.PROJECT], outcomes[kernel_cost.LISTED]
    assert project["ICMP echo request"] == "other_protocol"
    assert listed["ICMP echo request"] == "recorded_new"
    assert project["excluded source"] == "recorded_new"
    assert listed["excluded source"] == "excluded"
    assert project["port filtered out"] == listed["port filtered out"] == "port_filtered"
    assert project["not IP (ARP)"] == listed["not IP (ARP)"] == "not_ip"
    for case in (kernel_cost.HOT, "hot path IPv6", "IPv6, 3 extension headers", "QinQ IPv4"):
        assert project[case] == listed[case] == "recorded_new", case
    targets = {t.name: t for t in report.targets(results)}
    assert f"kernel: {kernel_cost.HOT} ({kernel_cost.LISTED})" in targets


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


def test_table_exact_from_two_cpus(require_root: None, results: dict) -> None:
    exact = results["kernel"]["exactness_two_cpus"]
    assert exact["sources"] == kernel_cost.SMOKE.exact_sources
    # Every source once in the table (no claim lost, none made twice); a source missing from
    # the read was given up for another in a full set, and counted as such.
    assert exact["outcomes"]["recorded_new"] == exact["sources"]
    assert exact["outcomes"].get("insert_failed", 0) == 0
    assert exact["keys_read"] + exact["evicted"] == exact["sources"]
    assert exact["each_source_read_exact"]
    assert exact["packets_read"] == exact["packets_of_sources_read"]


def test_flood_keeps_sources_that_keep_sending(require_root: None, results: dict) -> None:
    for capacity, checks in results["kernel"]["flood_checks"].items():
        kept = checks["protection"]
        assert kept["protected"] == int(capacity) // 8, capacity
        # By design only a set whose ways all hold established sources gives one up.
        assert kept["still_present"] >= kept["protected"] - kept["sets_full_of_established"]
        assert kept["evicted_during_flood"] > 0, capacity  # the table was full and did evict


def test_throughput_measured_every_contender(require_root: None, results: dict) -> None:
    measured = results["throughput"]
    assert set(measured["modes"]) == {"fixed sources", "random sources"}
    for mode, figures in measured["modes"].items():
        assert set(figures["contenders"]) == set(throughput.CONTENDERS), mode
        for name, entry in figures["contenders"].items():
            _positive(entry["pps"], f"{mode}: {name} packets/s")
            _positive(entry["vs_no_program"], f"{mode}: {name} vs no program")
            _positive(entry["vs_nftables"], f"{mode}: {name} vs nftables")
            if name.startswith(("empty XDP", "project", "first version")):
                _positive(entry["vs_empty_same_mode"], f"{mode}: {name} vs empty")
    assert measured["project_frames_recorded"] > 0
    assert measured["project_new_sources"] > 0
    assert measured["first_version_frames_recorded"] > 0


def test_userspace_read_and_served_every_entry(require_root: None, results: dict) -> None:
    userspace = results["userspace"]
    entries = userspace["config"]["entries"]
    assert userspace["active_sources"] == entries
    assert userspace["refresh_parts"]["rows"] == entries
    assert userspace["table_slots"] >= userspace["config"]["capacity"]
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


def test_kernel_sketch_equals_the_daemons_mirror(require_root: None, results: dict) -> None:
    kernel = results["sketch"]["kernel"]
    assert kernel["sources"] == sketch_accuracy.SMOKE.sources
    assert kernel["recorded_new"] == kernel["sources"]
    assert kernel["evicted"] > 0  # the table was smaller than the flood
    assert kernel["registers_differing"] == 0
    assert not kernel["exact"]  # sources were lost from the table: the count is the estimate
    assert abs(kernel["error"]) < 5 * results["sketch"]["relative_standard_error"]
    cardinalities = [t["cardinality"] for t in results["sketch"]["trials"]]
    assert cardinalities == list(sketch_accuracy.SMOKE.cardinalities)
    hosts = results["sketch"]["two_hosts"]
    assert abs(hosts["union_error"]) < 0.05 < hosts["sum_error"]


def test_markdown_names_every_target(require_root: None, results: dict) -> None:
    text = report.markdown(results)
    names = [target.name for target in report.targets(results)]
    assert len(names) >= 12
    for name in names:
        assert name in text
