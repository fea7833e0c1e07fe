"""Issue 13 on the real daemon with real packets: pings (ICMP and ICMPv6 echo requests from raw
sockets, answered by the host's kernel), SCTP INITs, TCP; an excluded source; a reload that
swaps the exclude list for an include list, live."""

from __future__ import annotations

import pytest

from .conftest import Lab, active_users, wait_for

pytestmark = pytest.mark.root

FAST = {"window": 10, "refresh_interval": 1, "serve_ip_list": True}


def frames_total(metrics: str, outcome: str) -> float:
    prefix = f'xdp_ip_counter_frames_total{{outcome="{outcome}"}} '
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def test_pings_sctp_and_an_excluded_source_then_a_live_swap_of_the_lists(
    lab: Lab, start_daemon
) -> None:
    a, _ = lab.links
    kept, also_kept, excluded = a.client_v4
    daemon = start_daemon(
        interfaces=[a.host_if],
        ports=[22],
        protocols=["tcp", "icmp", "icmpv6", "sctp"],
        exclude_sources=[excluded],
        **FAST,
    )
    for source in a.client_v4:
        lab.send("icmp", source, a.host_v4, 8, count=2)  # echo requests
        lab.send("tcp", source, a.host_v4, 22)
    lab.send("icmp", kept, a.host_v4, 13)  # a timestamp request: not in icmp_types
    lab.send("icmp", a.client_v6[0], a.host_v6, 128)
    lab.send("sctp", also_kept, a.host_v4, 22)
    lab.send("sctp", a.client_v6[1], a.host_v6, 22)

    wanted = {
        ("v4", "icmp", "8"): 2.0,  # kept and also_kept; not the excluded one
        ("v6", "icmpv6", "128"): 1.0,
        ("v4", "tcp", "22"): 2.0,
        ("v4", "sctp", "22"): 1.0,
        ("v6", "sctp", "22"): 1.0,
    }

    def counted() -> bool:
        users = active_users(daemon.metrics())
        return all(users.get(label) == value for label, value in wanted.items())

    wait_for(counted, 15, f"active_users {wanted}")
    users = active_users(daemon.metrics())
    assert ("v4", "icmp", "13") not in users and ("v4", "udp", "22") not in users
    metrics = daemon.metrics()
    assert frames_total(metrics, "excluded") >= 3  # two pings and a SYN (and SYN retries)
    assert frames_total(metrics, "port_filtered") >= 1  # the timestamp request
    listed = {(e["ip"], e["proto"], e["port"]) for e in daemon.list("?proto=icmp")}
    assert listed == {(kept, "icmp", 8), (also_kept, "icmp", 8)}
    assert not [e for e in daemon.list() if e["ip"] == excluded]

    # Live: only the formerly excluded source is recorded now; what was seen stays counted.
    daemon.write_config(
        interfaces=[a.host_if],
        ports=[22],
        protocols=["tcp", "icmp", "icmpv6", "sctp"],
        include_sources=[f"{excluded}/32"],
        **FAST,
    )
    daemon.reload()
    wait_for(lambda: "reloaded:" in daemon.log(), 15, "the reload's log line")
    assert "include_sources: none -> " in daemon.log()
    before = frames_total(daemon.metrics(), "not_included")
    lab.send("icmp", excluded, a.host_v4, 8)
    lab.send("icmp", kept, a.host_v4, 8)  # not included: not counted again, still in window
    wait_for(
        lambda: {e["ip"] for e in daemon.list("?proto=icmp")} == {kept, also_kept, excluded},
        15,
        "the newly included source listed",
    )
    assert frames_total(daemon.metrics(), "not_included") >= before + 1
