"""Least privilege: the daemon works as an unprivileged user holding only CAP_BPF, CAP_PERFMON
and CAP_NET_ADMIN, and keeps only CAP_BPF and CAP_NET_ADMIN once attached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import require

from .conftest import Lab, wait_for
from .test_daemon import FAST, xdp_attached

pytestmark = pytest.mark.root

CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF = 12, 38, 39
NEEDED = "+bpf,+perfmon,+net_admin"


def capabilities_of(pid: int) -> dict[str, int]:
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {name: int(fields[name], 16) for name in ("CapEff", "CapPrm", "CapAmb", "CapInh")} | {
        "Uid": int(fields["Uid"].split()[0])
    }


def test_runs_as_nobody_with_only_the_three_capabilities(lab: Lab, start_daemon) -> None:
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) is missing")
    a, b = lab.links
    as_nobody = (
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        f"--inh-caps={NEEDED}", f"--ambient-caps={NEEDED}",
    )  # fmt: skip
    daemon = start_daemon(
        interfaces=[a.host_if], ports=[22], prefix=as_nobody, world_readable=True, **FAST
    )
    caps = capabilities_of(daemon.proc.pid)
    kept = 1 << CAP_BPF | 1 << CAP_NET_ADMIN
    assert caps["Uid"] == 65534
    assert (caps["CapEff"], caps["CapPrm"], caps["CapInh"]) == (kept, kept, 0), caps

    lab.send("tcp", a.client_v4[0], a.host_v4, 22)
    wait_for(lambda: len(daemon.list()) == 1, 10, "a source counted by the unprivileged daemon")

    # a reload attaching one more interface works with what is left
    daemon.write_config(interfaces=[a.host_if, b.host_if], ports=[22], **FAST)
    daemon.reload()
    assert "xdp_ip_counter_config_last_reload_successful 1.0" in daemon.metrics()
    assert xdp_attached(b.host_if)
    assert daemon.stop() == 0
    assert not xdp_attached(a.host_if) and not xdp_attached(b.host_if)


def test_without_cap_perfmon_it_fails_to_load_naming_the_cause(lab: Lab, start_daemon) -> None:
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) is missing")
    a, _ = lab.links
    fewer = "+bpf,+net_admin"
    as_nobody = (
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        f"--inh-caps={fewer}", f"--ambient-caps={fewer}",
    )  # fmt: skip
    daemon = start_daemon(
        interfaces=[a.host_if], ports=[22], prefix=as_nobody, world_readable=True,
        wait_ready=False, **FAST,
    )  # fmt: skip
    assert daemon.proc.wait(60) == 1
    assert "cannot compile or load" in daemon.log()
    assert not xdp_attached(a.host_if)
