"""The in-kernel port filter: listed ports, all ports, and a rewrite while loaded."""

from __future__ import annotations

import pytest

from tests.support import frames as f
from xdp_ip_counter.config import PortFilter

from .program import UDP, ProgramUnderTest

pytestmark = pytest.mark.root


def test_listed_ports_are_counted_and_others_filtered(program: ProgramUnderTest) -> None:
    program.watch(PortFilter.of({22, 80}))
    ssh, web = program.key_v4("10.40.0.2", 22), program.key_v6("fd00:40::2", 80, UDP)
    program.expect(f.v4_tcp("10.40.0.2", 22), "recorded_new", {ssh: (1, 40)})
    program.expect(f.v6_udp("fd00:40::2", 80), "recorded_new", {ssh: (1, 40), web: (1, 48)})
    for frame in (
        f.v4_tcp("10.40.0.2", 443),
        f.v4_udp("10.40.0.3", 23),
        f.v6_tcp("fd00:40::2", 81),
        f.v6_udp("fd00:40::3", 8080),
    ):
        program.expect(frame, "port_filtered", {ssh: (1, 40), web: (1, 48)})


def test_filtered_frames_are_still_parsed_first(program: ProgramUnderTest) -> None:
    """A non-first fragment to an unwatched port is a fragment, a truncated one malformed:
    the filter applies only to frames that got as far as a port."""
    program.watch(PortFilter.of({22}))
    program.expect(f.v4_tcp("10.41.0.2", 443, flags_fragment=0x0010), "fragment", {})
    program.expect(f.v4_tcp("10.41.0.2", 443).data[:50], "malformed", {})
    program.expect(f.v4_tcp("10.41.0.2", 443), "port_filtered", {})


def test_all_ports(program: ProgramUnderTest) -> None:
    program.watch(PortFilter.all())
    expected = {}
    for port in (1, 22, 63, 64, 1023, 32768, 65535):
        expected[program.key_v4("10.42.0.2", port, UDP)] = (1, 28)
        program.expect(f.v4_udp("10.42.0.2", port), "recorded_new", expected)
    expected[program.key_v4("10.42.0.2", 0)] = (1, 40)
    program.expect(f.v4_tcp("10.42.0.2", 0), "recorded_new", expected)


@pytest.mark.parametrize(
    ("watched", "neighbours"),
    [
        ({1}, [0, 2, 65]),
        ({63, 64}, [62, 65, 127, 128, 0]),
        ({65535}, [65534, 65471, 0, 1]),
        ({128, 4096, 65472}, [127, 129, 4095, 4097, 65471, 65473, 64, 0]),
    ],
)
def test_port_bitmap_word_boundaries(
    program: ProgramUnderTest, watched: set[int], neighbours: list[int]
) -> None:
    """Ports at the edges of the 64-bit words of the bitmap, and their neighbours."""
    program.watch(PortFilter.of(watched))
    expected = {}
    for port in sorted(watched):
        expected[program.key_v4("10.43.0.2", port, UDP)] = (1, 28)
        program.expect(f.v4_udp("10.43.0.2", port), "recorded_new", expected)
    for port in neighbours:
        program.expect(f.v4_udp("10.43.0.2", port), "port_filtered", expected)


def test_many_listed_ports(program: ProgramUnderTest) -> None:
    """Every 97th port watched: each watched one counted, the one after it filtered."""
    watched = set(range(3, 65536, 97))
    program.watch(PortFilter.of(watched))
    for port in sorted(watched)[::25]:
        program.expect(
            f.v4_udp("10.44.0.2", port),
            "recorded_new",
            {program.key_v4("10.44.0.2", port, UDP): (1, 28)},
        )
        program.expect(
            f.v4_udp("10.44.0.2", port + 1),
            "port_filtered",
            {program.key_v4("10.44.0.2", port, UDP): (1, 28)},
        )
        program.clear()


def test_rewriting_the_filter_while_loaded(program: ProgramUnderTest) -> None:
    old, new = program.key_v4("10.45.0.2", 22), program.key_v4("10.45.0.2", 8443)
    both = program.key_v4("10.45.0.2", 80)
    program.watch(PortFilter.of({22, 80}))
    program.expect(f.v4_tcp("10.45.0.2", 8443), "port_filtered", {})
    program.expect(f.v4_tcp("10.45.0.2", 22), "recorded_new", {old: (1, 40)})
    program.expect(f.v4_tcp("10.45.0.2", 80), "recorded_new", {old: (1, 40), both: (1, 40)})

    program.watch(PortFilter.of({80, 8443}))
    state = {old: (1, 40), both: (1, 40)}
    program.expect(f.v4_tcp("10.45.0.2", 22), "port_filtered", state)
    state[new] = (1, 40)
    program.expect(f.v4_tcp("10.45.0.2", 8443), "recorded_new", state)
    state[both] = (2, 80)
    program.expect(f.v4_tcp("10.45.0.2", 80), "recorded", state)

    program.watch(PortFilter.all())
    state[old] = (2, 80)
    program.expect(f.v4_tcp("10.45.0.2", 22), "recorded", state)
    state[program.key_v4("10.45.0.2", 9)] = (1, 40)
    program.expect(f.v4_tcp("10.45.0.2", 9), "recorded_new", state)

    program.watch(PortFilter.of({8443}))
    for port in (22, 80, 9, 8444):
        program.expect(f.v4_tcp("10.45.0.2", port), "port_filtered", state)
    state[new] = (2, 80)
    program.expect(f.v4_tcp("10.45.0.2", 8443), "recorded", state)
