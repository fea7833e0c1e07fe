"""Results (the JSON bench/run.py writes) -> Markdown tables, and the targets checked.

Figures read "median [min-max]" over the rounds; ratios are against a baseline measured in the
same round.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    wanted: str
    measured: str
    met: bool


def _spread(figure: dict, scale: float = 1.0, digits: int = 0) -> str:
    median, low, high = (figure[k] * scale for k in ("median", "min", "max"))
    if low == high:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def _ratio(figure: dict) -> str:
    return _spread(figure, digits=2)


def _optional_ratio(row: dict, key: str) -> str:
    return _ratio(row[key]) if key in row else ""


def kernel_table(kernel: dict) -> Iterator[str]:
    yield (
        "| frame | other entries in table | program | ns/frame | empty XDP ns | ratio to empty "
        "| ratio to first version | added cost vs first version's |"
    )
    yield "|---|---|---|---:|---:|---:|---:|---:|"
    for row in kernel["rows"]:
        entries = row["entries"] if row["entries"] != "1" else "-"
        yield (
            f"| {row['case']} | {entries} | {row['program']} | {_spread(row['ns'])} "
            f"| {_spread(row['empty_ns'])} | {_ratio(row['ratio'])} "
            f"| {_optional_ratio(row, 'to_first_version')} "
            f"| {_optional_ratio(row, 'added_vs_first_version')} |"
        )
    capacity, slots = kernel["capacity"], kernel.get("slots", {})
    yield ""
    yield (
        "Capacity of the tables above: "
        + ", ".join(
            f"{name} {entries}" + (f" ({slots[name]} slots)" if name in slots else "")
            for name, entries in capacity.items()
        )
        + "; entries when full: "
        + ", ".join(f"{name} {n}" for name, n in kernel["at_scale_entries"].items())
        + "."
    )
    for program, outcomes in kernel.get("case_outcomes", {}).items():
        yield (
            f"What {program} makes of each frame: "
            + ", ".join(f"{case}: {outcome}" for case, outcome in outcomes.items())
            + "."
        )
    counts = kernel["project_counts"]
    exact = all(c["sent"] == c["counted"] for c in counts.values())
    each = ", ".join(f"{case}: {c['counted']}/{c['sent']}" for case, c in counts.items())
    yield (
        f"Frames the product was given vs packets it reports (read through mmap, as the daemon "
        f"reads): {'all equal' if exact else 'DIFFERENT'} ({each})."
    )


def flood_table(kernel: dict) -> Iterator[str]:
    yield (
        "| table | capacity | new sources per test run | program | ns/frame | empty XDP ns "
        "| ratio to empty | ratio to first version | added cost vs first version's |"
    )
    yield "|---|---:|---:|---|---:|---:|---:|---:|---:|"
    for row in kernel["flood"]:
        yield (
            f"| {row['table']} | {row['capacity']} | {row['frames_per_run']} | {row['program']} "
            f"| {_spread(row['ns'])} | {_spread(row['empty_ns'])} | {_ratio(row['ratio'])} "
            f"| {_ratio(row['to_first_version'])} | {_ratio(row['added_vs_first_version'])} |"
        )
    yield ""
    for capacity, checks in kernel["flood_checks"].items():
        room, full, kept = checks["room"], checks["full"], checks["protection"]
        slots = f" ({checks['slots']} slots)" if "slots" in checks else ""
        yield (
            f"- Table of {capacity}{slots}: room, {room['frames_given']} frames -> "
            f"{room.get('recorded_new', 0)} new entries, {room.get('evicted', 0)} evicted; "
            f"full, {full['frames_given']} frames -> {full.get('recorded_new', 0)} new entries, "
            f"{full.get('evicted', 0)} evicted, {full.get('insert_failed', 0)} not recorded, "
            f"{full['live_entries']} live after (first version: "
            f"{checks['first_version_entries']}). Protection: {kept['still_present']} of "
            f"{kept['protected']} established sources still there, with their counts, after "
            f"{kept['flood']} one-packet sources ({kept['evicted_during_flood']} evictions; "
            f"{kept['sets_full_of_established']} sets held only established sources)."
            + "".join(_losses_sentence(checks.get("losses", [])))
            + "".join(_budget_sentence(checks))
        )
    exact = kernel["exactness_two_cpus"]
    yield (
        f"- Exactness from {exact['cpus']} CPUs at once: {exact['sources']} sources in a table "
        f"of {exact['capacity']}, {exact['frames']} frames -> {exact['keys_read']} keys, "
        f"{exact['packets_read']} packets ({exact['duplicate_slots_merged']} duplicate slots "
        f"merged; every source read has exactly its frames: "
        f"{'yes' if exact['each_source_read_exact'] else 'NO'}; {exact['evicted']} evicted, "
        f"{exact['outcomes'].get('insert_failed', 0)} not recorded)."
    )
    rows = [
        (capacity, loss)
        for capacity, checks in kernel["flood_checks"].items()
        for loss in checks.get("losses", [])
    ]
    if rows:
        yield ""
        yield (
            "| max_entries | filled to | new sources | lost (not in the table) | share lost "
            "| evicted | not recorded (insert_failed) |"
        )
        yield "|---:|---:|---:|---:|---:|---:|---:|"
        for capacity, loss in rows:
            yield (
                f"| {capacity} | {loss['load']:.0%} | {loss['sources']} | {loss['lost']} "
                f"| {loss['lost'] / loss['sources']:.3%} | {loss['evicted']} "
                f"| {loss['insert_failed']} |"
            )


def _losses_sentence(losses: list[dict]) -> Iterator[str]:
    if losses:
        each = ", ".join(
            f"{loss['load']:.0%} {loss['lost']} of {loss['sources']}" for loss in losses
        )
        yield f" Sources lost, by load of max_entries: {each}."


def _budgeted(measured: dict) -> list[str]:
    """The throughput run's product contenders with a new-source budget (none in older runs)."""
    programs = {name.split(", ")[0] for name in measured["contenders"]}
    return sorted(p for p in programs if p.startswith("project with "))


def _budget_sentence(checks: dict) -> Iterator[str]:
    for table in ("room", "full"):
        budgeted = checks.get(f"{table}_budgeted")
        if budgeted:
            yield (
                f" With the new-source budget ({table}): {budgeted.get('recorded_new', 0)} "
                f"new entries, {budgeted.get('not_admitted', 0)} not admitted."
            )


def throughput_table(throughput: dict) -> Iterator[str]:
    for mode, measured in throughput["modes"].items():
        yield f"**{mode}**"
        yield ""
        yield "| receiver | packets/s | vs no program | vs empty XDP, same mode | vs nftables |"
        yield "|---|---:|---:|---:|---:|"
        for name, entry in measured["contenders"].items():
            same_mode = _ratio(entry["vs_empty_same_mode"]) if "vs_empty_same_mode" in entry else ""
            yield (
                f"| {name} | {_spread(entry['pps'])} | {_ratio(entry['vs_no_program'])} "
                f"| {same_mode} | {_ratio(entry['vs_nftables'])} |"
            )
        if measured["trafgen_deaths"]:
            yield ""
            yield f"trafgen restarted {len(measured['trafgen_deaths'])} time(s)."
        yield ""


def userspace_table(userspace: dict) -> Iterator[str]:
    entries = userspace["config"]["entries"]
    metrics = userspace["metrics"]["during_refreshes"]
    quiet = userspace["metrics"]["without_refreshes"]
    parts = userspace["refresh_parts"]
    rss = userspace["rss_mb"]
    startup = userspace["startup"]
    listing = userspace["list"]
    yield "| measurement | value |"
    yield "|---|---:|"
    refresh = _spread(userspace["refresh"], digits=2)
    yield f"| refresh (Daemon.refresh), {entries} entries, s | {refresh} |"
    yield (
        f"| of which the table read through mmap / the window's counts / the sketches, s "
        f"| {parts['read_sources_s']:.2f} / {parts['counts_s']:.2f} / "
        f"{parts['sketches_s']:.3f} |"
    )
    yield (
        f"| /list's rows (sorted, merged across interfaces; made on the first /list after a "
        f"refresh), s | {parts['list_rows_s']:.2f} |"
    )
    yield (
        f"| /metrics p50 / p99 / max during back-to-back refreshes, ms "
        f"({metrics['requests']} requests, {metrics['refreshes_meanwhile']} refreshes) "
        f"| {_spread(metrics['p50_s'], 1000, 1)} / {_spread(metrics['p99_s'], 1000, 1)} / "
        f"{_spread(metrics['max_s'], 1000, 1)} |"
    )
    reads = ", ".join(f"{read['seconds']:.2f}" for read in listing)
    yield (
        f"| /metrics p50 / p99 / max with no refresh running (the machine's own noise), ms "
        f"({quiet['requests']} requests) | {_spread(quiet['p50_s'], 1000, 1)} / "
        f"{_spread(quiet['p99_s'], 1000, 1)} / {_spread(quiet['max_s'], 1000, 1)} |"
    )
    yield (
        f"| /list with {listing[0]['rows']} rows ({listing[0]['bytes'] / 1e6:.0f} MB), s "
        f"| {reads} |"
    )
    expire = userspace["expire_all_refresh_s"]
    yield f"| refresh in which all {entries} entries have left the window, s | {expire:.2f} |"
    capacity, compile_s = userspace["config"]["capacity"], userspace["compile_and_load_s"]
    slots = userspace["table_slots"]
    yield f"| compile + load, max_entries {capacity} ({slots} slots), s | {compile_s:.2f} |"
    yield (
        f"| daemon start to READY=1 (default capacity, one interface), s "
        f"| {_spread(startup['to_ready_s'], digits=2)} |"
    )
    yield f"| daemon RSS when ready, MB | {_spread(startup['rss_when_ready_mb'])} |"
    yield (
        f"| RSS of the refresh + server process, MB: compiling (peak) / compiled / peaks while "
        f"refreshing / refreshing and serving /metrics / serving /list / all entries expired "
        f"| {rss['compile_peak']:.0f} / {rss['after_compile']:.0f} / "
        f"{rss['peak_refreshing']:.0f} / {rss['peak_refreshing_and_serving_metrics']:.0f} / "
        f"{rss['peak_serving_list']:.0f} / {rss['peak_expiring']:.0f} |"
    )


def _max_entries(figures: dict) -> str:
    return f", max_entries {figures['max_entries']}" if "max_entries" in figures else ""


def sketch_lines(result: dict) -> Iterator[str]:
    kernel = result["kernel"]
    yield (
        f"In the kernel: {kernel['sources']} distinct IPv4 sources through the product (table of "
        f"{kernel['table_slots']} slots{_max_entries(kernel)}: {kernel['evicted']} evictions), "
        f"read as the daemon "
        f"reads: registers differing from xdp_ip_counter.sketch's: "
        f"{kernel['registers_differing']} of {1 << result['p']}; active_users estimate "
        f"{kernel['estimate']:.0f} ({kernel['error']:+.2%}), marked "
        f"{'exact' if kernel['exact'] else 'estimated'}; the fleet's p = 12 registers with the "
        f"classic estimator {kernel['fleet_classic_estimate']:.0f} "
        f"({kernel['fleet_classic_error']:+.2%}). Sketch map: {kernel['sketches']} sketches, "
        f"{kernel['sketch_map_bytes'] / 1e6:.1f} MB."
    )
    yield ""
    yield (
        "| sources | trials | p = 14 (active_users): mean / rms / largest error "
        "| p = 12 classic (the fleet rule): mean / rms / largest error |"
    )
    yield "|---:|---:|---:|---:|"
    for t in result["trials"]:
        yield (
            f"| {t['cardinality']:,} | {t['trials']} | {t['mean_error']:+.2%} / "
            f"{t['rms_error']:.2%} / {t['max_abs_error']:.2%} | "
            f"{t['fleet_classic_mean_error']:+.2%} / {t['fleet_classic_rms_error']:.2%} / "
            f"{t['fleet_classic_max_abs_error']:.2%} |"
        )
    hosts = result["two_hosts"]
    yield ""
    yield (
        f"Two hosts, {hosts['each']:,} sources each, {hosts['shared']:,} in common (union "
        f"{hosts['true_union']:,}): sum of their estimates {hosts['sum_of_estimates']:,.0f} "
        f"({hosts['sum_error']:+.1%}); register-wise max {hosts['union_estimate']:,.0f} "
        f"({hosts['union_error']:+.2%}), at p = 12 with the classic estimator "
        f"{hosts['fleet_classic_union_estimate']:,.0f} ({hosts['fleet_classic_union_error']:+.2%})."
    )


HOT_PATH_LIMIT = 1.55  # the previous product (LRU hash + per-CPU cache): 1.45-1.55x empty
# The product as it is by default, and with every protocol and both source lists (issue 13).
HOT_PATH_PROGRAMS = ("project", "project, every protocol, source lists")
FLOOD_LIMIT = 0.4  # issue 12, goal 2


def targets(results: dict) -> list[Target]:
    found: list[Target] = []
    kernel = results.get("kernel")
    if kernel:
        for row in kernel["rows"]:
            if row["program"] in HOT_PATH_PROGRAMS and row["case"].startswith("hot path"):
                ratio = row["ratio"]["median"]
                entries = "" if row["entries"] == "1" else f", {row['entries']}"
                found.append(
                    Target(
                        f"kernel: {row['case']}{entries}"
                        + ("" if row["program"] == "project" else f" ({row['program']})"),
                        f"<= {HOT_PATH_LIMIT}x empty",
                        f"{ratio:.2f}x",
                        ratio <= HOT_PATH_LIMIT,
                    )
                )
        for row in kernel["flood"]:
            if row["program"] == "project":
                added = row["added_vs_first_version"]["median"]
                found.append(
                    Target(
                        f"kernel: flood run, table {row['table']}, {row['capacity']}: added cost",
                        f"<= {FLOOD_LIMIT}x first version's",
                        f"{added:.2f}x",
                        added <= FLOOD_LIMIT,
                    )
                )
        counts = kernel["project_counts"].values()
        exact = kernel["exactness_two_cpus"]
        kept = [checks["protection"] for checks in kernel["flood_checks"].values()]
        found += [
            Target(
                "kernel: frames given = packets reported",
                "equal",
                "equal" if all(c["sent"] == c["counted"] for c in counts) else "different",
                all(c["sent"] == c["counted"] for c in counts),
            ),
            Target(
                f"kernel: {exact['sources']} sources in a table of {exact['capacity']} from two "
                "CPUs at once",
                "every source kept, exact",
                f"{exact['keys_read']} kept ({exact['evicted']} evicted), "
                f"{'exact' if exact['each_source_read_exact'] else 'NOT exact'}",
                exact["each_source_read_exact"] and exact["keys_read"] == exact["sources"],
            ),
            *(
                Target(
                    f"kernel: sources lost, table of {capacity} filled to "
                    + " / ".join(f"{loss['load']:.0%}" for loss in checks["losses"])
                    + " of max_entries",
                    "none",
                    " / ".join(str(loss["lost"]) for loss in checks["losses"]),
                    all(loss["lost"] == 0 for loss in checks["losses"]),
                )
                for capacity, checks in kernel["flood_checks"].items()
                if checks.get("losses")
            ),
            Target(
                "kernel: established sources kept through a flood",
                "all but one per set of 8 established",
                ", ".join(f"{k['still_present']}/{k['protected']}" for k in kept),
                all(
                    k["still_present"] >= k["protected"] - k["sets_full_of_established"]
                    for k in kept
                ),
            ),
        ]
    throughput = results.get("throughput")
    if throughput:
        for mode, measured in throughput["modes"].items():
            want = 0.97 if mode == "fixed sources" else 0.90
            contenders = measured["contenders"]
            names = ["project, skb", "project, native"]
            names += [
                f"{budgeted}, {m}" for m in ("skb", "native") for budgeted in _budgeted(measured)
            ]
            for name in names:
                ratio = contenders[name]["vs_empty_same_mode"]["median"]
                found.append(
                    Target(
                        f"veth {mode}: {name}", f">= {want}x empty", f"{ratio:.3f}x", ratio >= want
                    )
                )
                versus = contenders[name]["vs_nftables"]["median"]
                found.append(
                    Target(
                        f"veth {mode}: {name} vs nftables",
                        "> 1.0x",
                        f"{versus:.3f}x",
                        versus > 1.0,
                    )
                )
    userspace = results.get("userspace")
    if userspace:
        refresh = userspace["refresh"]["median"]
        p99 = userspace["metrics"]["during_refreshes"]["p99_s"]["median"] * 1000
        ready = userspace["startup"]["to_ready_s"]["median"]
        peak = userspace["rss_mb"]["peak"]
        entries = userspace["config"]["entries"]
        found += [
            Target(
                f"refresh at {entries} entries", "<= 0.25 s", f"{refresh:.2f} s", refresh <= 0.25
            ),
            Target("/metrics p99 during refreshes", "<= 10 ms", f"{p99:.1f} ms", p99 <= 10.0),
            Target("start-up to READY", "<= 2 s", f"{ready:.2f} s", ready <= 2.0),
            Target(f"peak RSS at {entries} entries", "<= 200 MB", f"{peak:.0f} MB", peak <= 200),
        ]
    sketch = results.get("sketch")
    if sketch:
        kernel_sketch = sketch["kernel"]
        error = kernel_sketch["error"]
        found += [
            Target(
                "sketch: kernel registers = xdp_ip_counter.sketch's",
                "0 differing",
                f"{kernel_sketch['registers_differing']} differing",
                kernel_sketch["registers_differing"] == 0,
            ),
            Target(
                f"sketch: estimate at {kernel_sketch['sources']} sources",
                "within 3 %",
                f"{error:+.2%}",
                abs(error) <= 0.03,
            ),
        ]
    return found


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"Run {meta['date']} ({'smoke' if meta['smoke'] else 'full'}) of "
        f"{meta.get('product', 'the checkout')}, {meta['cpu']}, "
        f"{meta['cpus']} CPUs, kernel {meta['kernel']}, load average {meta['load_before']} before "
        f"and {meta['load_after']} after, {meta['seconds']:.0f} s.",
        "",
    ]
    if "kernel" in results:
        lines += [
            "### Kernel cost per frame (BPF_PROG_TEST_RUN)",
            "",
            *kernel_table(results["kernel"]),
            "",
            "### The flood run (a new source in every run of one test run)",
            "",
            *flood_table(results["kernel"]),
            "",
        ]
    if "throughput" in results:
        lines += [
            "### Throughput through a veth pair",
            "",
            *throughput_table(results["throughput"]),
        ]
    if "userspace" in results:
        lines += ["### Userspace at scale", "", *userspace_table(results["userspace"]), ""]
    if "sketch" in results:
        lines += ["### The sketch", "", *sketch_lines(results["sketch"]), ""]
    lines += ["### Targets", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for target in targets(results):
        met = "yes" if target.met else "NO"
        lines.append(f"| {target.name} | {target.wanted} | {target.measured} | {met} |")
    return "\n".join(lines) + "\n"
