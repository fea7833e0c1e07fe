"""The userspace benchmark's measured process: the daemon's refresh and HTTP server over a map
holding many entries, in a process of its own so that its peak RSS is the daemon's alone.

    python3 -m bench.userspace_worker '{"entries": ..., "capacity": ..., ...}'

It runs in a network namespace of the harness (bench/userspace.py). It loads the program
(timed), has a forked child fill the table through its mapping (so the fill's buffers are not
in this process's RSS), then starts the daemon's own Daemon over it (attached to the harness's
veth, where no frame arrives; its HTTP server on 127.0.0.1) and drives Daemon.refresh():
refresh durations, /metrics latency from a client process while refreshes run back to back,
the time to read /list, a refresh in which every entry has left the window, and the process's
RSS along the way. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from xdp_ip_counter import memory
from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.config import PortFilter, Settings
from xdp_ip_counter.daemon import Daemon
from xdp_ip_counter.sketch import SketchCounts, SketchWindow
from xdp_ip_counter.window import DeferredActiveSet, Snapshot

from . import fill
from .stats import summary

REPO = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"
IFINDEX = 1  # the entries' interface (lo: it exists in every namespace)


def rss_mb() -> dict[str, float]:
    """Resident set now (VmRSS) and at its peak (VmHWM), in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return {"now": fields["VmRSS"], "peak": fields["VmHWM"]}


def _peak_since_reset() -> float:
    """VmHWM in MiB, then reset to the current RSS (writing 5 to clear_refs), so that each
    phase's peak is its own."""
    peak = rss_mb()["peak"]
    Path("/proc/self/clear_refs").write_text("5")
    return peak


def _in_child(action) -> None:
    """Run action in a forked child and wait for it: its memory never counts here."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            action()
        except BaseException as exc:  # reported through the exit code and stderr
            print(f"fill failed: {exc!r}", file=sys.stderr)
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("filling the map failed")


def _client(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "bench.http_client", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def _client_result(process: subprocess.Popen, timeout: float) -> dict:
    out, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"http client failed ({process.returncode})")
    return json.loads(out)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(config: dict) -> dict:
    entries, capacity = int(config["entries"]), int(config["capacity"])
    result: dict = {"config": config, "rss_mb": {}}
    memory.return_large_frees_to_the_kernel()  # as daemon.run() does before anything else
    result["rss_mb"]["before_compile"] = rss_mb()["now"]
    started = time.perf_counter()
    datapath = DataPath(capacity)
    result["compile_and_load_s"] = time.perf_counter() - started
    result["table_slots"] = datapath.slots
    result["rss_mb"]["compile_peak"] = rss_mb()["peak"]
    result["rss_mb"]["after_compile"] = rss_mb()["now"]
    settings = replace(
        Settings(),
        interfaces=(str(config["interface"]),),  # the harness's veth: no frame arrives on it
        xdp_mode="skb",
        ports=PortFilter.all(),
        max_entries=capacity,
        serve_ip_list=True,
        listen_address="127.0.0.1",
        server_port=_free_port(),
        pin_path="",
    )
    started = time.perf_counter()
    _in_child(lambda: fill.fill_table(datapath, entries, mixed=True, ifindex=IFINDEX, keep=False))
    result["fill_s"] = time.perf_counter() - started
    result["rss_mb"]["after_fill"] = rss_mb()["now"]
    # From here on the peak is that of the daemon at work.
    _peak_since_reset()
    # The daemon's own start (configure, first refresh, server) and refresh, over our data
    # path, naming the interface of the filled entries.
    daemon = Daemon(settings, lambda: settings, datapath=datapath, interface_names={IFINDEX: "lo"})
    try:
        daemon.start()
        result["refresh"] = _refreshes(daemon, int(config["refreshes"]))
        view = daemon.current_view()
        result["active_sources"] = len(view.active) if view else 0
        result["rss_mb"]["after_refreshes"] = rss_mb()["now"]
        result["rss_mb"]["peak_refreshing"] = _peak_since_reset()
        del view
        result["refresh_parts"] = _refresh_parts(datapath, settings)
        # Not a peak of the daemon's (a second snapshot beside the View's): not in "peak".
        result["rss_mb"]["refresh_parts_peak"] = _peak_since_reset()

        base = f"http://127.0.0.1:{settings.server_port}"
        result["metrics"] = _metrics_while_refreshing(
            daemon, f"{base}/metrics", float(config["seconds"]), int(config["metrics_rounds"])
        )
        result["rss_mb"]["peak_refreshing_and_serving_metrics"] = _peak_since_reset()
        result["list"] = [
            _client_result(_client("list", f"{base}/list"), timeout=600)
            for _ in range(int(config["list_reads"]))
        ]
        result["rss_mb"]["after_list"] = rss_mb()["now"]
        result["rss_mb"]["peak_serving_list"] = _peak_since_reset()

        # A flood that ended a window ago: every entry has left the window at once.
        _in_child(
            lambda: fill.fill_table(
                datapath,
                entries,
                mixed=True,
                ifindex=IFINDEX,
                age_s=2 * settings.window,
                keep=False,
            )
        )
        started = time.perf_counter()
        daemon.refresh()
        result["expire_all_refresh_s"] = time.perf_counter() - started
        result["entries_after_expiry"] = len(datapath.read_sources()[0])
        result["rss_mb"]["peak_expiring"] = _peak_since_reset()
        result["rss_mb"]["peak"] = max(
            value for name, value in result["rss_mb"].items() if name.startswith("peak_")
        )
    finally:
        daemon.close()  # closes the data path too
    return result


def _refreshes(daemon: Daemon, count: int) -> dict:
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        daemon.refresh()
        durations.append(time.perf_counter() - started)
    return summary(durations)


def _refresh_parts(datapath: DataPath, settings: Settings) -> dict:
    """The refresh's steps timed one by one (one more refresh's worth), as Daemon.refresh()
    takes them: the table read through mmap, the window's counts (DeferredActiveSet: sources,
    prefixes of the settings' lengths, scanners), the sketches' window (read, union,
    estimates); then the rows /list asks for (sorted, merged across interfaces), which the
    daemon makes on the first /list after a refresh."""
    window = settings.window
    started = time.perf_counter()
    keys, values, taken_ns = datapath.read_sources()
    read = time.perf_counter()
    snapshot = Snapshot(keys=keys, values=values, taken_at_ns=taken_ns, taken_at_wall=time.time())
    active = DeferredActiveSet(
        snapshot,
        window,
        {IFINDEX: "lo"},
        prefix_lengths=settings.prefix_lengths,
        scan_ports=settings.scan_ports,
    )
    counted = time.perf_counter()
    union = SketchWindow(datapath.plan.sketches).update(datapath.read_sketches(), taken_ns, window)
    SketchCounts.of(union, datapath.plan, ())
    sketched = time.perf_counter()
    rows = len(active.resolve())
    done = time.perf_counter()
    return {
        "read_sources_s": read - started,
        "counts_s": counted - read,
        "sketches_s": sketched - counted,
        "list_rows_s": done - sketched,
        "rows": rows,
    }


def _metrics_while_refreshing(daemon: Daemon, url: str, seconds: float, rounds: int) -> dict:
    """/metrics latency from a client process, in rounds (each its own client run) that
    alternate between refreshes running back to back and no refresh at all: the quiet rounds
    show what the shared machine itself adds."""
    busy, quiet = [], []
    for _ in range(rounds):
        for refreshing, sink in ((True, busy), (False, quiet)):
            client = _client("metrics", url, str(seconds / rounds / 2))
            refreshes = 0
            while client.poll() is None:
                if refreshing:
                    daemon.refresh()
                    refreshes += 1
                else:
                    time.sleep(0.01)
            measured = _client_result(client, timeout=60)
            if not measured["requests"]:
                raise RuntimeError("the /metrics client made no request")
            sink.append(measured | {"refreshes_meanwhile": refreshes})
    return {"during_refreshes": _latencies(busy), "without_refreshes": _latencies(quiet)}


def _latencies(rounds: list[dict]) -> dict:
    return {
        "rounds": rounds,
        "requests": sum(r["requests"] for r in rounds),
        "failures": sum(r["failures"] for r in rounds),
        "refreshes_meanwhile": sum(r["refreshes_meanwhile"] for r in rounds),
        "p50_s": summary([r["p50_s"] for r in rounds]),
        "p99_s": summary([r["p99_s"] for r in rounds]),
        "max_s": summary([r["max_s"] for r in rounds]),
    }


def main(argv: list[str]) -> int:
    print(json.dumps(run(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
