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


def kernel_table(kernel: dict) -> Iterator[str]:
    yield "| frame | other entries in map | program | ns/frame | empty XDP ns | ratio to empty |"
    yield "|---|---|---|---:|---:|---:|"
    for row in kernel["rows"]:
        entries = row["entries"] if row["entries"] != "1" else "-"
        yield (
            f"| {row['case']} | {entries} | {row['program']} | {_spread(row['ns'])} "
            f"| {_spread(row['empty_ns'])} | {_ratio(row['ratio'])} |"
        )
    kept = kernel["entries_kept_from_one_cpu"]
    yield ""
    yield (
        f"Entries kept when every insert comes from one CPU (capacity {kept['capacity']}, "
        f"{kept['cpus']} CPUs): common LRU {kept['common_lru']}, BPF_F_NO_COMMON_LRU "
        f"{kept['no_common_lru']}."
    )
    counts = kernel["project_counts"]
    exact = all(c["sent"] == c["counted"] for c in counts.values())
    each = ", ".join(f"{case}: {c['counted']}/{c['sent']}" for case, c in counts.items())
    yield (
        f"Frames the project's program was given vs packets it reports (map + per-CPU cache): "
        f"{'all equal' if exact else 'DIFFERENT'} ({each})."
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
        f"| of which read_sources / active_set / stale_keys, s | {parts['read_sources_s']:.2f} / "
        f"{parts['active_set_s']:.2f} / {parts['stale_keys_s']:.3f} |"
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
    yield f"| refresh that expires all {entries} entries, s | {expire:.2f} |"
    capacity, compile_s = userspace["config"]["capacity"], userspace["compile_and_load_s"]
    yield f"| compile + load, capacity {capacity}, s | {compile_s:.2f} |"
    yield (
        f"| daemon start to READY=1 (default capacity, one interface), s "
        f"| {_spread(startup['to_ready_s'], digits=2)} |"
    )
    yield f"| daemon RSS when ready, MB | {_spread(startup['rss_when_ready_mb'])} |"
    yield (
        f"| RSS of the refresh + server process, MB: compiling (peak) / compiled / peaks while "
        f"refreshing / refreshing and serving /metrics / serving /list / expiring all "
        f"| {rss['compile_peak']:.0f} / {rss['after_compile']:.0f} / "
        f"{rss['peak_refreshing']:.0f} / {rss['peak_refreshing_and_serving_metrics']:.0f} / "
        f"{rss['peak_serving_list']:.0f} / {rss['peak_expiring']:.0f} |"
    )


def targets(results: dict) -> list[Target]:
    found: list[Target] = []
    kernel = results.get("kernel")
    if kernel:
        for row in kernel["rows"]:
            if row["program"] == "project" and row["case"].startswith("hot path"):
                ratio = row["ratio"]["median"]
                entries = "" if row["entries"] == "1" else f", {row['entries']}"
                found.append(
                    Target(
                        f"kernel: {row['case']}{entries}",
                        "<= 2.0x empty",
                        f"{ratio:.2f}x",
                        ratio <= 2.0,
                    )
                )
    throughput = results.get("throughput")
    if throughput:
        for mode, measured in throughput["modes"].items():
            want = 0.97 if mode == "fixed sources" else 0.90
            contenders = measured["contenders"]
            for name in ("project, skb", "project, native"):
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
            Target(f"refresh at {entries} entries", "<= 1 s", f"{refresh:.2f} s", refresh <= 1.0),
            Target("/metrics p99 during refreshes", "<= 10 ms", f"{p99:.1f} ms", p99 <= 10.0),
            Target("start-up to READY", "<= 2 s", f"{ready:.2f} s", ready <= 2.0),
            Target(f"peak RSS at {entries} entries", "<= 300 MB", f"{peak:.0f} MB", peak <= 300),
        ]
    return found


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"Run {meta['date']} ({'smoke' if meta['smoke'] else 'full'}), {meta['cpu']}, "
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
        ]
    if "throughput" in results:
        lines += [
            "### Throughput through a veth pair",
            "",
            *throughput_table(results["throughput"]),
        ]
    if "userspace" in results:
        lines += ["### Userspace at scale", "", *userspace_table(results["userspace"]), ""]
    lines += ["### Targets", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for target in targets(results):
        met = "yes" if target.met else "NO"
        lines.append(f"| {target.name} | {target.wanted} | {target.measured} | {met} |")
    return "\n".join(lines) + "\n"
