"""Run the benchmarks: kernel cost per frame (with the flood run), throughput through a veth
pair, userspace at scale, the sketch's accuracy. Needs root (BPF, XDP, network namespaces);
makes its own namespaces and removes them.

    /usr/bin/python3 -m bench.run            the full run (about 8 minutes on 2 quiet CPUs)
    /usr/bin/python3 -m bench.run --smoke    every measurement, briefly (seconds; for the tests)
    /usr/bin/python3 -m bench.run --only kernel,userspace
    /usr/bin/python3 -m bench.run --table bench/results/<file>.json   Markdown of a past run

Writes bench/results/<UTC date>[-smoke].json (or --out) and prints the Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from . import kernel_cost, report, sketch_accuracy, throughput, userspace

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("kernel", "throughput", "userspace", "sketch")


def product_version() -> str:
    """The commit measured, and whether the program or the daemon differ from it."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "bpf", "xdp_ip_counter")
    return f"{commit}{' with local changes' if changed else ''}"


def machine() -> dict:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "load_before": os.getloadavg()[0],
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(smoke: bool, parts: tuple[str, ...]) -> dict:
    started = time.monotonic()
    results: dict = {
        "meta": machine()
        | {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "smoke": smoke,
            "parts": list(parts),
            "product": product_version(),
        }
    }
    if "kernel" in parts:
        results["kernel"] = kernel_cost.run(kernel_cost.SMOKE if smoke else kernel_cost.FULL, log)
    if "throughput" in parts:
        results["throughput"] = throughput.run(throughput.SMOKE if smoke else throughput.FULL, log)
    if "userspace" in parts:
        results["userspace"] = userspace.run(userspace.SMOKE if smoke else userspace.FULL, log)
    if "sketch" in parts:
        config = sketch_accuracy.SMOKE if smoke else sketch_accuracy.FULL
        results["sketch"] = sketch_accuracy.run(config, log)
    results["meta"]["load_after"] = os.getloadavg()[0]
    results["meta"]["seconds"] = time.monotonic() - started
    return results


def _parts(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in PARTS]
    if unknown or not chosen:
        named = ", ".join(unknown) or "(none)"
        raise argparse.ArgumentTypeError(
            f"--only: unknown part(s) {named}; choose from {', '.join(PARTS)}"
        )
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every measurement, briefly")
    parser.add_argument("--only", type=_parts, default=PARTS, help="comma-separated parts")
    parser.add_argument("--out", type=Path, help="where to write the JSON results")
    parser.add_argument("--table", type=Path, help="print the Markdown of a results file")
    args = parser.parse_args(argv)
    if args.table:
        print(report.markdown(json.loads(args.table.read_text())), end="")
        return 0
    if os.geteuid() != 0:
        print("bench.run: needs root (BPF, XDP, network namespaces)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so that namespaces, programs and trafgen are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results = run(args.smoke, args.only)
    out = args.out
    if out is None:
        stamp = results["meta"]["date"].replace(":", "")
        out = RESULTS / f"{stamp}{'-smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"results in {out}")
    print(report.markdown(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
