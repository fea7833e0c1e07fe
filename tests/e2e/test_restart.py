"""Restarts: the pinned sources map carries the window over; a pinned map of another layout is
replaced, not misread; a second daemon on the same interface refuses to start."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from xdp_ip_counter.layout import SET_DTYPE
from xdp_ip_counter.pinning import PINNED, SOURCES

from .conftest import Lab, wait_for
from .test_daemon import FAST, xdp_attached

pytestmark = pytest.mark.root

BPFFS = Path("/sys/fs/bpf")


def _is_bpffs(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) and line.split()[2] == "bpf"
        for line in Path("/proc/mounts").read_text().splitlines()
    )


@pytest.fixture
def pin_dir(require_root) -> Iterator[Path]:
    mounted_here = False
    if not _is_bpffs(BPFFS):
        subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True)
        mounted_here = True
    directory = BPFFS / f"xic-test-{os.getpid()}"
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if mounted_here:
            subprocess.run(["umount", str(BPFFS)], check=False)


def millis(rfc3339: str) -> int:
    stamp = datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return round(stamp.timestamp() * 1000)


def pinned_map(path: Path) -> dict:
    out = subprocess.run(
        ["bpftool", "-j", "map", "show", "pinned", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def test_a_restart_keeps_what_was_seen(lab: Lab, start_daemon, pin_dir: Path) -> None:
    a, _ = lab.links
    settings = dict(interfaces=[a.host_if], ports=[22], pin_path=str(pin_dir), **FAST)
    first = start_daemon(**settings)
    for src in a.client_v4[:2]:
        lab.send("tcp", src, a.host_v4, 22)
    wait_for(lambda: len(first.list()) == 2, 10, "two sources")
    before = {e["ip"]: e for e in first.list()}
    assert first.stop() == 0
    for name in PINNED:
        assert (pin_dir / name).exists(), name

    second = start_daemon(**settings)
    after = {e["ip"]: e for e in second.list()}  # the first refresh is done before READY
    assert set(after) == set(before)
    for ip_text, entry in before.items():
        # Each process anchors the kernel's monotonic clock to wall time itself: the same
        # kernel timestamp may read 1 ms apart across processes, never more.
        assert abs(millis(after[ip_text]["first_seen"]) - millis(entry["first_seen"])) <= 1
        assert after[ip_text]["packets"] >= entry["packets"]
    assert "carried" in second.log()


def test_a_pinned_map_of_another_layout_is_replaced(lab: Lab, start_daemon, pin_dir: Path) -> None:
    a, _ = lab.links
    pin_dir.mkdir(parents=True)
    stale = pin_dir / SOURCES
    subprocess.run(
        [
            "bpftool",
            "map",
            "create",
            str(stale),
            "type",
            "hash",
            "key",
            "8",
            "value",
            "8",
            "entries",
            "16",
            "name",
            "old_layout",
        ],
        check=True,
    )
    older = pin_dir / "sources_v1"  # the LRU hash of layout 1
    subprocess.run(
        [
            "bpftool",
            "map",
            "create",
            str(older),
            "type",
            "lru_hash",
            "key",
            "24",
            "value",
            "32",
            "entries",
            "16",
            "name",
            "older",
        ],
        check=True,
    )
    daemon = start_daemon(interfaces=[a.host_if], ports=[22], pin_path=str(pin_dir), **FAST)
    log = daemon.log()
    assert f"replacing {stale}" in log
    assert f"removing {older}" in log
    assert not older.exists()
    info = pinned_map(stale)
    assert (info["bytes_key"], info["bytes_value"], info["type"]) == (
        4,
        SET_DTYPE.itemsize,
        "array",
    )
    assert daemon.list() == []
    lab.send("tcp", a.client_v4[0], a.host_v4, 22)
    wait_for(lambda: len(daemon.list()) == 1, 10, "the daemon to count as usual")


def test_pin_path_not_on_bpffs_is_refused(lab: Lab, start_daemon, tmp_path: Path) -> None:
    a, _ = lab.links
    daemon = start_daemon(
        interfaces=[a.host_if],
        ports=[22],
        pin_path=str(tmp_path / "pins"),
        wait_ready=False,
        **FAST,
    )
    assert daemon.proc.wait(60) == 1
    assert "not on a BPF filesystem" in daemon.log()
    assert not xdp_attached(a.host_if)


def test_a_second_daemon_on_the_same_interface_refuses(lab: Lab, start_daemon) -> None:
    a, b = lab.links
    first = start_daemon(interfaces=[a.host_if], ports=[22], **FAST)
    second = start_daemon(interfaces=[b.host_if, a.host_if], ports=[80], wait_ready=False, **FAST)
    assert second.proc.wait(60) == 1
    assert a.host_if in second.log() and "another XDP program" in second.log()
    # the first keeps working, the second attached nothing that stayed
    assert not xdp_attached(b.host_if)
    assert xdp_attached(a.host_if) and first.proc.poll() is None
    lab.send("tcp", a.client_v4[0], a.host_v4, 22)
    wait_for(lambda: len(first.list()) == 1, 10, "the first daemon to keep counting")
    assert first.stop(signal.SIGINT) == 0
    assert not xdp_attached(a.host_if)
