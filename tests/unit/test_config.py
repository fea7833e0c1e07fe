"""config.py: port lists, the TOML file, Settings' checks, diff/needs_restart, interfaces."""

from __future__ import annotations

import socket
from dataclasses import fields
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

import pytest

from xdp_ip_counter.config import (
    FILE_KEYS,
    MAX_ENTRIES_LIMIT,
    MAX_FLEET_PORTS,
    MAX_PREFIX_LENGTHS,
    MAX_SOURCE_PREFIXES,
    NEW_SOURCE_BUDGET_LIMIT,
    RESTART_FIELDS,
    SETTINGS,
    Apply,
    ConfigError,
    PortFilter,
    Settings,
    diff,
    load_file,
    needs_restart,
    parse_fleet_ports,
    parse_icmp_types,
    parse_ports,
    parse_prefix_lengths,
    parse_protocols,
    parse_sources,
    validate_interfaces,
)
from xdp_ip_counter.layout import PROTOCOLS

REPO = Path(__file__).resolve().parents[2]
PACKAGED_CONFIG = REPO / "packaging" / "config.toml"
SOURCE = "argument -p/--ports"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


# ------------------------------------------------------------------------------------------
# Ports


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", PortFilter.all()),
        ([], PortFilter.all()),
        ([0], PortFilter.all()),
        ("22", PortFilter.of({22})),
        ("22,80,8000-8002", PortFilter.of({22, 80, 8000, 8001, 8002})),
        (" 22 , 80 ", PortFilter.of({22, 80})),
        ("1,65535", PortFilter.of({1, 65535})),
        ("443-443", PortFilter.of({443})),
        ("80,80,79-81", PortFilter.of({79, 80, 81})),
        ([22, "8000-8001"], PortFilter.of({22, 8000, 8001})),
        (["53"], PortFilter.of({53})),
    ],
)
def test_parse_ports_accepts(value, expected: PortFilter) -> None:
    assert parse_ports(value, SOURCE) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("65536", "port 65536 is outside 0..65535"),
        ("22,70000-70001", "item 2: port 70000 is outside 0..65535"),
        ("22,,80", "item 2: empty item"),
        ("22,", "item 2: empty item"),
        ("", "empty port list"),
        ("  ", "empty port list"),
        ("abc", "'abc' is neither a port number nor"),
        ("22x", "'22x' is neither"),
        ("0x16", "'0x16' is neither"),
        ("1e3", "'1e3' is neither"),
        ("-1", "'-1' is neither"),
        ("+22", "'+22' is neither"),
        ("\u0662\u0662", "is neither"),  # Arabic-Indic digits: str.isdigit() would say yes
        ("1-2-3", "'1-2-3' is neither"),
        ("8000-", "'8000-' is neither"),
        ("8100-8000", "range 8100-8000 is reversed"),
        ("0,22", "0 means all ports and cannot be mixed with other ports"),
        ("22,0", "0 means all ports and cannot be mixed"),
        ("0,0", "0 means all ports and cannot be mixed"),
        ("0-100", "port 0 means all ports and cannot start a range"),
        ([70000], "item 1: port 70000 is outside 0..65535"),
        ([-1], "item 1: port -1 is outside 0..65535"),
        ([22, ""], "item 2: empty item"),
        (["abc"], "'abc' is neither"),
        ([1.5], 'item 1: expected a port number or a "low-high" range, got a float'),
        ([True], 'item 1: expected a port number or a "low-high" range, got a boolean'),
        (["8100-8000"], "reversed"),
        ([0, 22], "cannot be mixed"),
        (22, "expected an array"),
    ],
)
def test_parse_ports_rejects(value, problem: str) -> None:
    message = error_of(parse_ports, value, SOURCE)
    assert message.startswith(SOURCE + ": ")
    assert problem in message


@pytest.mark.parametrize(
    ("port_filter", "text"),
    [
        (PortFilter.all(), "all"),
        (PortFilter.of({80, 22, *range(8000, 8101)}), "22,80,8000-8100"),
        (PortFilter.of({1, 2, 4}), "1-2,4"),
        (PortFilter.of({65535}), "65535"),
    ],
)
def test_port_filter_text(port_filter: PortFilter, text: str) -> None:
    assert str(port_filter) == text
    # The text reads back as the same filter.
    assert parse_ports("0" if text == "all" else text, SOURCE) == port_filter


def test_port_filter_membership() -> None:
    assert 12345 in PortFilter.all()
    listed = PortFilter.of({22, 80})
    assert 22 in listed
    assert 23 not in listed


@pytest.mark.parametrize("ports", [set(), {0}, {65536}, {True}])
def test_port_filter_refuses_impossible_sets(ports: set[int]) -> None:
    with pytest.raises(ValueError):
        PortFilter.of(ports)


def test_port_filter_all_with_ports_is_impossible() -> None:
    with pytest.raises(ValueError):
        PortFilter(all_ports=True, ports=frozenset({22}))


# ------------------------------------------------------------------------------------------
# Fleet ports

FLEET = "argument --fleet-ports"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("53", (53,)),
        ("53,22", (22, 53)),
        (" 22 , 53 ,22", (22, 53)),
        ("1,65535", (1, 65535)),
        ("", ()),
        ([], ()),
        ([443, 22, 443], (22, 443)),
        (["53"], (53,)),
    ],
)
def test_parse_fleet_ports_accepts(value: str | list, expected: tuple[int, ...]) -> None:
    assert parse_fleet_ports(value, FLEET) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ssh", "item 1: expected a port number, got a string ('ssh')"),
        ("22,8000-8100", "item 2: expected a port number, got a string ('8000-8100')"),
        ("0", "item 1: port 0 is outside 1..65535"),
        ("22,65536", "item 2: port 65536 is outside 1..65535"),
        ("-1", "item 1: expected a port number, got a string ('-1')"),
        ([22, True], "item 2: expected a port number, got a boolean (True)"),
        ([22.0], "item 1: expected a port number, got a float (22.0)"),
        ([0], "item 1: port 0 is outside 1..65535"),
        (22, "expected an array such as [22, 53], got an integer (22)"),
    ],
)
def test_parse_fleet_ports_rejects(value: object, problem: str) -> None:
    assert error_of(parse_fleet_ports, value, FLEET) == f"{FLEET}: {problem}"


def test_at_most_16_fleet_ports() -> None:
    ports = PortFilter.of(range(1000, 1100))
    fleet = tuple(range(1000, 1000 + MAX_FLEET_PORTS))
    assert Settings(ports=ports, fleet_ports=fleet).fleet_ports == fleet
    message = error_of(
        Settings, ports=ports, fleet_ports=(*fleet, 2000), origins={"fleet_ports": FLEET}
    )
    assert message == (
        f"{FLEET}: at most 16 ports (each exports 16,384 series: 4,096 registers per family and "
        "protocol), got 17"
    )


def test_a_fleet_port_must_be_watched() -> None:
    assert Settings(fleet_ports=(53, 22)).fleet_ports == (53, 22)  # all ports watched
    assert Settings(ports=PortFilter.of({22, 53}), fleet_ports=(53,)).fleet_ports == (53,)
    where = "/etc/x.toml: key 'fleet_ports'"
    message = error_of(
        Settings,
        ports=PortFilter.of({22, 80, 81}),
        fleet_ports=(22, 53),
        origins={"fleet_ports": where},
    )
    assert message == f"{where}: port 53 is not watched (ports: 22,80-81)"


def test_fleet_ports_are_live_and_shown_in_a_reloads_diff() -> None:
    old, new = Settings(), Settings(fleet_ports=(22, 53))
    assert needs_restart(old, new) == []
    assert diff(old, new) == ["fleet_ports: none -> 22,53"]
    assert diff(new, old) == ["fleet_ports: 22,53 -> none"]


# ------------------------------------------------------------------------------------------
# Protocols

PROTOCOLS_FLAG = "argument --protocols"
ALL_PROTOCOL_NAMES = "tcp, udp, icmp, icmpv6, sctp, udplite, dccp"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tcp", (6,)),
        ("udp,tcp", (6, 17)),  # in the order of layout.PROTOCOLS, not as given
        (" TCP , Udp ", (6, 17)),
        ("tcp,tcp,udp", (6, 17)),
        ("icmp", (1,)),
        ("icmpv6,icmp", (1, 58)),
        ("dccp,udplite,sctp", (132, 136, 33)),
        (["dccp", "tcp"], (6, 33)),
        (",".join(PROTOCOLS.values()), (6, 17, 1, 58, 132, 136, 33)),
        ("", ()),  # parsed; Settings refuses it (no protocols)
        ([], ()),
    ],
)
def test_parse_protocols_accepts(value: str | list, expected: tuple[int, ...]) -> None:
    assert parse_protocols(value, PROTOCOLS_FLAG) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("tpc", f"item 1: expected one of {ALL_PROTOCOL_NAMES}, got a string ('tpc')"),
        ("tcp,6", f"item 2: expected one of {ALL_PROTOCOL_NAMES}, got a string ('6')"),
        ("tcp,,udp", "item 2: empty item"),
        ("tcp,", "item 2: empty item"),
        ("ip", f"item 1: expected one of {ALL_PROTOCOL_NAMES}, got a string ('ip')"),
        ([6], f"item 1: expected one of {ALL_PROTOCOL_NAMES}, got an integer (6)"),
        (["tcp", True], f"item 2: expected one of {ALL_PROTOCOL_NAMES}, got a boolean (True)"),
        ([["tcp"]], f"item 1: expected one of {ALL_PROTOCOL_NAMES}, got an array (['tcp'])"),
    ],
)
def test_parse_protocols_rejects(value: object, problem: str) -> None:
    assert error_of(parse_protocols, value, PROTOCOLS_FLAG) == f"{PROTOCOLS_FLAG}: {problem}"


def test_no_protocols_is_refused() -> None:
    message = error_of(Settings, protocols=(), origins={"protocols": PROTOCOLS_FLAG})
    assert message == f"{PROTOCOLS_FLAG}: no protocols: name at least one of {ALL_PROTOCOL_NAMES}"


# ------------------------------------------------------------------------------------------
# ICMP types

ICMP_FLAG = "argument --icmp-types"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("icmp:8,icmpv6:128", ((1, 8), (58, 128))),
        ("icmpv6:128,icmp:8", ((1, 8), (58, 128))),
        ("8", ((1, 8), (58, 8))),  # a bare type is both protocols' type
        ("icmp:3,icmp:11,icmpv6:1,icmpv6:3", ((1, 3), (1, 11), (58, 1), (58, 3))),
        (" ICMP : 0 , IcmpV6:255 ", ((1, 0), (58, 255))),
        ("icmp:8,8,icmp:8", ((1, 8), (58, 8))),  # each once
        ([8, "icmp:3"], ((1, 3), (1, 8), (58, 8))),
        (["0", 255], ((1, 0), (1, 255), (58, 0), (58, 255))),
        ("", ()),
        ([], ()),
    ],
)
def test_parse_icmp_types_accepts(value: str | list, expected: tuple[tuple[int, int], ...]) -> None:
    assert parse_icmp_types(value, ICMP_FLAG) == expected


ICMP_EXPECTED = 'expected an ICMP type (8, "icmp:8" or "icmpv6:128")'


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("tcp:8", "item 1: 'tcp:8': expected icmp:TYPE or icmpv6:TYPE"),
        ("icmp:8,icmp4:8", "item 2: 'icmp4:8': expected icmp:TYPE or icmpv6:TYPE"),
        ("icmp:", f"item 1: {ICMP_EXPECTED}, got a string ('icmp:')"),
        ("icmp:echo", f"item 1: {ICMP_EXPECTED}, got a string ('icmp:echo')"),
        ("icmp:-1", f"item 1: {ICMP_EXPECTED}, got a string ('icmp:-1')"),
        ("icmp:8:0", f"item 1: {ICMP_EXPECTED}, got a string ('icmp:8:0')"),
        ("icmp:256", "item 1: ICMP type 256 is outside 0..255"),
        ("8,256", "item 2: ICMP type 256 is outside 0..255"),
        ("8,,0", "item 2: empty item"),
        ([-1], "item 1: ICMP type -1 is outside 0..255"),
        ([True], f"item 1: {ICMP_EXPECTED}, got a boolean (True)"),
        ([8.0], f"item 1: {ICMP_EXPECTED}, got a float (8.0)"),
        ([[8]], f"item 1: {ICMP_EXPECTED}, got an array ([8])"),
        (8, 'expected an array such as ["icmp:8", "icmpv6:128"], got an integer (8)'),
    ],
)
def test_parse_icmp_types_rejects(value: object, problem: str) -> None:
    assert error_of(parse_icmp_types, value, ICMP_FLAG) == f"{ICMP_FLAG}: {problem}"


# ------------------------------------------------------------------------------------------
# Source lists

SOURCES_FLAG = "argument --exclude-sources"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.0/8", ("10.0.0.0/8",)),
        ("192.0.2.7", ("192.0.2.7/32",)),  # an address alone is a /32
        ("2001:db8::1", ("2001:db8::1/128",)),  # or a /128
        # sorted, IPv4 first
        (
            "2001:db8::/32,198.51.100.0/24,10.0.0.0/8",
            ("10.0.0.0/8", "198.51.100.0/24", "2001:db8::/32"),
        ),
        # duplicates once, however written
        ("192.0.2.7,192.0.2.7/32, 192.0.2.7 ", ("192.0.2.7/32",)),
        ("2001:DB8::/32,2001:db8:0::/32", ("2001:db8::/32",)),
        # overlapping prefixes are kept as given (the longest match decides in the kernel)
        ("10.0.0.0/8,10.1.0.0/16,10.1.2.3", ("10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32")),
        ("0.0.0.0/0,::/0", ("0.0.0.0/0", "::/0")),
        ("10.0.0.0/08", ("10.0.0.0/8",)),
        (["192.0.2.0/24", "fd00::/8"], ("192.0.2.0/24", "fd00::/8")),
        ("", ()),
        ([], ()),
    ],
)
def test_parse_sources_accepts(value: str | list, expected: tuple[str, ...]) -> None:
    parsed = parse_sources(value, SOURCES_FLAG)
    assert parsed == tuple(ip_network(text) for text in expected)
    assert all(isinstance(network, IPv4Network | IPv6Network) for network in parsed)


NOT_A_PREFIX = (
    'is not an IPv4 or IPv6 address or prefix (such as "192.0.2.7", "10.0.0.0/8", "2001:db8::/32")'
)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            "10.0.0.1/8",
            "item 1: '10.0.0.1/8' has host bits set (the /8 prefix of 10.0.0.1 is 10.0.0.0/8)",
        ),
        (
            "10.0.0.0/8,2001:db8::1/32",
            "item 2: '2001:db8::1/32' has host bits set (the /32 prefix of 2001:db8::1 is "
            "2001:db8::/32)",
        ),
        (
            "10.0.0.0/33",
            "item 1: '10.0.0.0/33': expected a prefix length 0..32 after the '/', got '33'",
        ),
        ("::/129", "item 1: '::/129': expected a prefix length 0..128 after the '/', got '129'"),
        ("10.0.0.0/", "item 1: '10.0.0.0/': expected a prefix length 0..32 after the '/', got ''"),
        (
            "10.0.0.0/-1",
            "item 1: '10.0.0.0/-1': expected a prefix length 0..32 after the '/', got '-1'",
        ),
        (
            "10.0.0.0/255.0.0.0",
            "item 1: '10.0.0.0/255.0.0.0': expected a prefix length 0..32 after the '/', "
            "got '255.0.0.0'",
        ),
        (
            "10.0.0.0/8/8",
            "item 1: '10.0.0.0/8/8': expected a prefix length 0..32 after the '/', got '8/8'",
        ),
        ("example.org", f"item 1: 'example.org' {NOT_A_PREFIX}"),
        ("10.0.0.0/8,10.0.0", f"item 2: '10.0.0' {NOT_A_PREFIX}"),
        ("010.0.0.0/8", f"item 1: '010.0.0.0/8' {NOT_A_PREFIX}"),
        ("/8", f"item 1: '/8' {NOT_A_PREFIX}"),
        ("fe80::%eth0/64", "item 1: 'fe80::%eth0/64': a source prefix has no scope (%zone)"),
        ("fe80::1%eth0", "item 1: 'fe80::1%eth0': a source prefix has no scope (%zone)"),
        (
            "::ffff:10.0.0.0/104",
            "item 1: '::ffff:10.0.0.0/104' is IPv4-mapped: write the IPv4 prefix (10.0.0.0/8)",
        ),
        (
            "::ffff:192.0.2.7",
            "item 1: '::ffff:192.0.2.7' is IPv4-mapped: write the IPv4 prefix (192.0.2.7/32)",
        ),
        ("10.0.0.0/8,,::1", "item 2: empty item"),
        (
            [167772160],
            'item 1: expected an address or prefix such as "10.0.0.0/8", '
            "got an integer (167772160)",
        ),
        (
            ["10.0.0.0/8", ["::1"]],
            'item 2: expected an address or prefix such as "10.0.0.0/8", got an array',
        ),
        (True, 'expected an array such as ["10.0.0.0/8", "2001:db8::/32"], got a boolean (True)'),
    ],
)
def test_parse_sources_rejects(value: object, problem: str) -> None:
    message = error_of(parse_sources, value, SOURCES_FLAG)
    assert message.startswith(f"{SOURCES_FLAG}: {problem}")


@pytest.mark.parametrize("key", ["exclude_sources", "include_sources"])
def test_at_most_max_source_prefixes(key: str) -> None:
    prefixes = tuple(IPv4Network(address) for address in range(MAX_SOURCE_PREFIXES))
    assert getattr(Settings(**{key: prefixes}), key) == prefixes
    where = f"/etc/x.toml: key '{key}'"
    too_many = (*prefixes, ip_network("2001:db8::/32"))
    assert error_of(Settings, **{key: too_many}, origins={key: where}) == (
        f"{where}: at most {MAX_SOURCE_PREFIXES} prefixes (the size of the kernel's trie), "
        f"got {MAX_SOURCE_PREFIXES + 1}"
    )


def test_a_source_both_excluded_and_included_is_valid() -> None:
    """Not an error: the exclusion wins (the kernel looks at the exclude list first)."""
    both = (ip_network("10.0.0.0/8"),)
    settings = Settings(exclude_sources=both, include_sources=both)
    assert settings.exclude_sources == settings.include_sources == both


# ------------------------------------------------------------------------------------------
# Prefix lengths

LENGTHS_FLAG = "argument --prefix-lengths"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("v4:24,v6:48", ((4, 24), (6, 48))),
        ("v6:64,v4:16,v4:24", ((4, 16), (4, 24), (6, 64))),
        (" V4 : 8 ", ((4, 8),)),
        ("v4:24,v4:24", ((4, 24),)),
        ("v4:1,v4:32,v6:1,v6:128", ((4, 1), (4, 32), (6, 1), (6, 128))),
        (["v6:56"], ((6, 56),)),
        ("", ()),
        ([], ()),
    ],
)
def test_parse_prefix_lengths_accepts(value: str | list, expected: tuple) -> None:
    assert parse_prefix_lengths(value, LENGTHS_FLAG) == expected


LENGTH_EXPECTED = 'expected v4:LENGTH or v6:LENGTH (such as "v4:24")'


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("v4:0", "item 1: an IPv4 prefix length is 1..32, got 0"),
        ("v4:24,v4:33", "item 2: an IPv4 prefix length is 1..32, got 33"),
        ("v6:129", "item 1: an IPv6 prefix length is 1..128, got 129"),
        ("24", f"item 1: {LENGTH_EXPECTED}, got a string ('24')"),
        ("v4", f"item 1: {LENGTH_EXPECTED}, got a string ('v4')"),
        ("4:24", f"item 1: {LENGTH_EXPECTED}, got a string ('4:24')"),
        ("ipv4:24", f"item 1: {LENGTH_EXPECTED}, got a string ('ipv4:24')"),
        ("v4:/24", f"item 1: {LENGTH_EXPECTED}, got a string ('v4:/24')"),
        ("v4:-8", f"item 1: {LENGTH_EXPECTED}, got a string ('v4:-8')"),
        ("v4:24,,v6:48", "item 2: empty item"),
        ([24], f"item 1: {LENGTH_EXPECTED}, got an integer (24)"),
    ],
)
def test_parse_prefix_lengths_rejects(value: object, problem: str) -> None:
    assert error_of(parse_prefix_lengths, value, LENGTHS_FLAG) == f"{LENGTHS_FLAG}: {problem}"


def test_at_most_4_prefix_lengths_per_family() -> None:
    four_each = parse_prefix_lengths("v4:8,v4:16,v4:24,v4:32,v6:32,v6:48,v6:56,v6:64", "x")
    assert Settings(prefix_lengths=four_each).prefix_lengths == four_each
    for family, extra in ((4, "v4:12"), (6, "v6:128")):
        five = parse_prefix_lengths(f"v4:8,v4:16,v4:24,v4:32,v6:32,v6:48,v6:56,v6:64,{extra}", "x")
        message = error_of(Settings, prefix_lengths=five, origins={"prefix_lengths": LENGTHS_FLAG})
        assert message == (
            f"{LENGTHS_FLAG}: at most {MAX_PREFIX_LENGTHS} v{family} lengths (each is one more "
            "active_prefixes series per port and protocol), got 5"
        )


# ------------------------------------------------------------------------------------------
# The declarations


def test_one_declaration_per_settings_field_in_the_same_order() -> None:
    names = [f.name for f in fields(Settings) if f.name not in ("config_path", "origins")]
    assert [setting.key for setting in SETTINGS] == names
    assert tuple(names) == FILE_KEYS


def test_each_declaration_is_consistent() -> None:
    flags = [flag for setting in SETTINGS for flag in setting.flags]
    assert len(flags) == len(set(flags)), "a flag is declared twice"
    for setting in SETTINGS:
        # The default passes the setting's own check, and the key is named after the long flag
        # ("Each setting has a key in the file named like its flag", says --help).
        setting.check(setting.default, setting.key)
        long_flag = setting.flags[-1]
        assert long_flag.startswith("--"), setting.key
        assert long_flag[2:].replace("-", "_").replace(".", "_") in (setting.key, "iface")
        assert setting.file_types, setting.key
    # The original tool's five flags, in their order.
    originals = [setting.flag for setting in SETTINGS if setting.original]
    assert originals == [
        "-i/--iface",
        "-p/--ports",
        "-w/--window",
        "-s/--server-port",
        "--serve-ip-list",
    ]


def test_restart_fields_are_the_declared_ones_in_the_order_of_apply() -> None:
    assert set(RESTART_FIELDS) == {s.key for s in SETTINGS if s.apply is not Apply.LIVE}
    assert RESTART_FIELDS == (
        "listen_address",
        "server_port",
        "max_entries",
        "pin_path",
        "xdp_mode",
    )


# ------------------------------------------------------------------------------------------
# Settings built directly


def test_defaults_are_the_contract() -> None:
    settings = Settings()
    assert settings.interfaces == ("eth0",)
    assert settings.ports == PortFilter.all()
    assert settings.window == 60
    assert settings.listen_address == "0.0.0.0"
    assert settings.server_port == 3031
    assert settings.serve_ip_list is False
    assert settings.xdp_mode == "skb"
    assert settings.max_entries == 262144
    assert settings.new_source_budget == 0  # no budget: every new source is kept, as before
    assert settings.refresh_interval == 10
    assert settings.fleet_ports == ()
    assert settings.protocols == (6, 17)  # tcp, udp: the original tool's
    assert settings.icmp_types == ((1, 8), (58, 128))  # echo requests, when icmp is recorded
    assert settings.exclude_sources == ()
    assert settings.include_sources == ()  # every source
    assert settings.prefix_lengths == ((4, 24), (6, 48))
    assert settings.scan_ports == 10
    assert settings.config_path is None


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("window", 0, "must be a positive multiple of 10 (seconds), got 0"),
        ("window", 15, "must be a positive multiple of 10 (seconds), got 15"),
        ("window", -10, "got -10"),
        ("window", "60", "expected an integer, got a string ('60')"),
        ("window", True, "expected an integer, got a boolean"),
        ("server_port", 0, "must be 1..65535, got 0"),
        ("server_port", 65536, "must be 1..65535, got 65536"),
        ("max_entries", 0, f"must be 1..{MAX_ENTRIES_LIMIT}, got 0"),
        ("max_entries", MAX_ENTRIES_LIMIT + 1, f"got {MAX_ENTRIES_LIMIT + 1}"),
        ("new_source_budget", -1, f"must be 0..{NEW_SOURCE_BUDGET_LIMIT}, got -1"),
        ("new_source_budget", NEW_SOURCE_BUDGET_LIMIT + 1, f"got {NEW_SOURCE_BUDGET_LIMIT + 1}"),
        ("new_source_budget", "1000", "expected an integer, got a string ('1000')"),
        ("new_source_budget", 1000.0, "expected an integer, got a float (1000.0)"),
        ("new_source_budget", True, "expected an integer, got a boolean (True)"),
        ("refresh_interval", 0, "must be >= 1, got 0"),
        ("listen_address", "localhost", "'localhost' is not an IPv4 or IPv6 address"),
        ("listen_address", "300.1.1.1", "is not an IPv4 or IPv6 address"),
        ("listen_address", "", "is not an IPv4 or IPv6 address"),
        ("xdp_mode", "drv", "must be one of skb, native, got a string ('drv')"),
        ("serve_ip_list", "yes", "expected true or false"),
        ("interfaces", (), "no interfaces"),
        ("interfaces", ("",), "empty interface name"),
        ("interfaces", ("lo", "lo"), "interface 'lo' is listed twice"),
        ("interfaces", ("a/b",), "'a/b' is not a valid interface name"),
        ("interfaces", ("x" * 16,), "is not a valid interface name"),
        ("interfaces", ("e th0",), "is not a valid interface name"),
        ("interfaces", ("eth0:1",), "'eth0:1' is not a valid interface name"),
        ("interfaces", ("..",), "'..' is not a valid interface name"),
        ("interfaces", "lo", "expected a list of interface names"),
        ("protocols", (6, 99), "expected protocol numbers, got an array ((6, 99))"),
        ("protocols", (True,), "expected protocol numbers, got an array ((True,))"),
        ("protocols", ("tcp",), "expected protocol numbers"),
        ("protocols", [6], "expected protocol numbers, got an array ([6])"),
        ("protocols", ([6],), "expected protocol numbers"),
        ("icmp_types", ((6, 8),), "expected (protocol, type) pairs"),
        ("icmp_types", ((1, 256),), "expected (protocol, type) pairs"),
        ("icmp_types", ((1, True),), "expected (protocol, type) pairs"),
        ("icmp_types", ((1,),), "expected (protocol, type) pairs"),
        ("exclude_sources", ("10.0.0.0/8",), "expected networks, got an array"),
        ("include_sources", [ip_network("::/0")], "expected networks, got an array"),
        ("prefix_lengths", ((4, 33),), "expected (family, length) pairs"),
        ("prefix_lengths", ((4, 0),), "expected (family, length) pairs"),
        ("prefix_lengths", ((5, 8),), "expected (family, length) pairs"),
        ("prefix_lengths", ((6, True),), "expected (family, length) pairs"),
        ("scan_ports", -1, "must be 0..65535, got -1"),
        ("scan_ports", 65536, "must be 0..65535, got 65536"),
        ("scan_ports", "10", "expected an integer, got a string ('10')"),
        ("scan_ports", True, "expected an integer, got a boolean (True)"),
    ],
)
def test_settings_reject(field: str, value: object, problem: str) -> None:
    message = error_of(Settings, **{field: value})
    # Built directly, a value is named as the default it replaced, with its flag and key.
    assert message.startswith(f"default {field} (set it with ")
    assert f"key '{field}'" in message
    assert problem in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_entries", MAX_ENTRIES_LIMIT),
        ("max_entries", 1),
        ("new_source_budget", 0),
        ("new_source_budget", 1),
        ("new_source_budget", NEW_SOURCE_BUDGET_LIMIT),
        ("listen_address", "::1"),
        ("listen_address", "::"),
        ("listen_address", "127.0.0.1"),
        ("listen_address", "fe80::1%lo"),
        ("xdp_mode", "native"),
        ("interfaces", ("x" * 15,)),
        ("server_port", 65535),
        ("window", 3600),
        ("protocols", (6, 17, 1, 58, 132, 136, 33)),
        ("icmp_types", ()),
        ("icmp_types", ((1, 0), (1, 255), (58, 0))),
        ("exclude_sources", (ip_network("0.0.0.0/0"), ip_network("::/0"))),
        ("prefix_lengths", ()),
        ("prefix_lengths", ((4, 1), (4, 32), (6, 128))),
        ("scan_ports", 0),
        ("scan_ports", 1),
        ("scan_ports", 65535),
    ],
)
def test_settings_accept(field: str, value: object) -> None:
    assert getattr(Settings(**{field: value}), field) == value


@pytest.mark.parametrize(("window", "refresh"), [(10, 1), (10, 2), (10, 5), (10, 10), (60, 20)])
def test_refresh_interval_dividing_the_window(window: int, refresh: int) -> None:
    assert Settings(window=window, refresh_interval=refresh).refresh_interval == refresh


def test_refresh_interval_must_divide_the_window() -> None:
    message = error_of(
        Settings, window=60, refresh_interval=7, origins={"refresh_interval": "here"}
    )
    assert message == "here: the window (60 s) must be a multiple of refresh_interval (7 s)"


def test_refresh_interval_longer_than_the_window() -> None:
    message = error_of(
        Settings,
        window=10,
        refresh_interval=20,
        origins={"window": "there", "refresh_interval": "x"},
    )
    assert message.startswith("x: the window (10 s) must be a multiple of refresh_interval (20 s)")


def test_describe_is_one_line_with_the_essentials() -> None:
    settings = Settings(
        interfaces=("lo", "veth1"),
        ports=PortFilter.of({22, 80}),
        window=120,
        listen_address="::1",
        serve_ip_list=True,
    )
    line = settings.describe()
    assert "\n" not in line
    for part in ("interfaces lo,veth1", "ports 22,80", "window 120s", "[::1]:3031", "ip list on"):
        assert part in line


def test_describe_says_what_is_recorded() -> None:
    assert (
        "; protocols tcp,udp; sources all; prefix lengths v4:24,v6:48; scan ports 10; "
        "config file none"
    ) in Settings().describe()
    line = Settings(
        protocols=(6, 1),
        icmp_types=((1, 3), (58, 128)),
        include_sources=(ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")),
        exclude_sources=(ip_network("10.1.0.0/16"),),
        prefix_lengths=(),
        scan_ports=0,
    ).describe()
    # ICMP types only of the ICMP protocols recorded; excluded sources after the included ones
    assert (
        "; protocols tcp,icmp (icmp types icmp:3); "
        "sources 10.0.0.0/8,2001:db8::/32 except 10.1.0.0/16; prefix lengths none; scan ports off;"
    ) in line
    assert (
        "sources all except 192.0.2.7/32;"
        in Settings(exclude_sources=(ip_network("192.0.2.7"),)).describe()
    )
    assert (
        "protocols icmpv6 (icmp types none);"
        in Settings(protocols=(58,), icmp_types=((1, 8),)).describe()
    )


# ------------------------------------------------------------------------------------------
# The TOML file


def test_packaged_config_is_the_defaults() -> None:
    values = load_file(PACKAGED_CONFIG)
    # The defaults, but the package keeps the map pinned across restarts.
    assert Settings(**values) == Settings(pin_path="/sys/fs/bpf/xdp-ip-counter")
    # Every key is set (or, for refresh_interval, shown commented out) in the example.
    text = PACKAGED_CONFIG.read_text()
    for key in FILE_KEYS:
        assert f"\n{key} = " in text or f"\n# {key} = " in text, key


def test_load_file_converts_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
interfaces = ["lo", "veth0"]
ports = [22, 80, "8000-8002"]
window = 30
listen_address = "::1"
server_port = 9031
serve_ip_list = true
xdp_mode = "native"
max_entries = 1024
new_source_budget = 20000
refresh_interval = 5
fleet_ports = [80, 22]
protocols = ["udp", "ICMP", "tcp", "sctp"]
icmp_types = ["icmp:3", 8, "icmpv6:128"]
exclude_sources = ["2001:db8::/32", "192.0.2.7", "10.0.0.0/8"]
include_sources = ["10.0.0.0/8", "10.0.0.0/8", "fd00::/8"]
prefix_lengths = ["v6:56", "v4:16"]
scan_ports = 0
""",
    )
    assert load_file(path) == {
        "interfaces": ("lo", "veth0"),
        "ports": PortFilter.of({22, 80, 8000, 8001, 8002}),
        "window": 30,
        "fleet_ports": (22, 80),
        "listen_address": "::1",
        "server_port": 9031,
        "serve_ip_list": True,
        "xdp_mode": "native",
        "max_entries": 1024,
        "new_source_budget": 20000,
        "refresh_interval": 5,
        "protocols": (6, 17, 1, 132),
        "icmp_types": ((1, 3), (1, 8), (58, 8), (58, 128)),
        "exclude_sources": (
            IPv4Network("10.0.0.0/8"),
            IPv4Network("192.0.2.7/32"),
            IPv6Network("2001:db8::/32"),
        ),
        "include_sources": (IPv4Network("10.0.0.0/8"), IPv6Network("fd00::/8")),
        "prefix_lengths": ((4, 16), (6, 56)),
        "scan_ports": 0,
    }


def test_empty_file_is_no_keys(tmp_path: Path) -> None:
    assert load_file(write(tmp_path, "# nothing\n")) == {}


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("window = 0", "window", "must be a positive multiple of 10 (seconds), got 0"),
        ("window = 15", "window", "must be a positive multiple of 10 (seconds), got 15"),
        ('window = "60"', "window", "expected an integer, got a string ('60')"),
        ("window = 60.0", "window", "expected an integer, got a float (60.0)"),
        ("window = true", "window", "expected an integer, got a boolean (True)"),
        ("ports = [70000]", "ports", "item 1: port 70000 is outside 0..65535"),
        ('ports = [22, ""]', "ports", "item 2: empty item"),
        ('ports = ["ssh"]', "ports", "'ssh' is neither a port number nor"),
        ('ports = ["8100-8000"]', "ports", "range 8100-8000 is reversed"),
        ("ports = [0, 22]", "ports", "0 means all ports and cannot be mixed"),
        ('ports = "22,80"', "ports", "expected an array, got a string"),
        ("ports = [[22]]", "ports", "item 1: expected a port number"),
        ("interfaces = []", "interfaces", "no interfaces"),
        ('interfaces = "eth0"', "interfaces", "expected an array, got a string"),
        ("interfaces = [1]", "interfaces", "item 1: expected an interface name, got an integer"),
        ('interfaces = ["lo", "lo"]', "interfaces", "interface 'lo' is listed twice"),
        ('interfaces = ["lo", ""]', "interfaces", "empty interface name"),
        ('listen_address = "nowhere"', "listen_address", "is not an IPv4 or IPv6 address"),
        ("listen_address = 0", "listen_address", "expected a string, got an integer"),
        ("server_port = 0", "server_port", "must be 1..65535, got 0"),
        ("server_port = 65536", "server_port", "must be 1..65535, got 65536"),
        ('server_port = "3031"', "server_port", "expected an integer, got a string"),
        ('serve_ip_list = "true"', "serve_ip_list", "expected true or false, got a string"),
        ("serve_ip_list = 1", "serve_ip_list", "expected true or false, got an integer"),
        ('xdp_mode = "drv"', "xdp_mode", "must be one of skb, native"),
        ("max_entries = 0", "max_entries", "must be 1..134217728, got 0"),
        ("max_entries = 134217729", "max_entries", "must be 1..134217728, got 134217729"),
        ("new_source_budget = -1", "new_source_budget", "must be 0..100000000, got -1"),
        (
            "new_source_budget = 100000001",
            "new_source_budget",
            "must be 0..100000000, got 100000001",
        ),
        ('new_source_budget = "1000"', "new_source_budget", "expected an integer, got a string"),
        ("new_source_budget = 1.5", "new_source_budget", "expected an integer, got a float (1.5)"),
        ("new_source_budget = true", "new_source_budget", "expected an integer, got a boolean"),
        ("new_source_budget = [1000]", "new_source_budget", "expected an integer, got an array"),
        ("refresh_interval = 0", "refresh_interval", "must be >= 1, got 0"),
        ('fleet_ports = "22,53"', "fleet_ports", "expected an array, got a string ('22,53')"),
        ("fleet_ports = 22", "fleet_ports", "expected an array, got an integer (22)"),
        ("fleet_ports = [0]", "fleet_ports", "item 1: port 0 is outside 1..65535"),
        ('fleet_ports = ["8000-8100"]', "fleet_ports", "item 1: expected a port number"),
        ("fleet_ports = [[22]]", "fleet_ports", "item 1: expected a port number, got an array"),
        (
            f"fleet_ports = {list(range(1, 18))}",
            "fleet_ports",
            "at most 16 ports (each exports 16,384 series",
        ),
        ('protocols = "tcp"', "protocols", "expected an array, got a string ('tcp')"),
        ("protocols = []", "protocols", "no protocols: name at least one of tcp, udp, icmp,"),
        ('protocols = ["tcp", "http"]', "protocols", "item 2: expected one of tcp, udp, icmp,"),
        ("protocols = [6]", "protocols", "item 1: expected one of tcp, udp, icmp, icmpv6, sctp"),
        ('icmp_types = "icmp:8"', "icmp_types", "expected an array, got a string ('icmp:8')"),
        ('icmp_types = ["icmp:300"]', "icmp_types", "item 1: ICMP type 300 is outside 0..255"),
        ('icmp_types = ["udp:8"]', "icmp_types", "item 1: 'udp:8': expected icmp:TYPE or"),
        ("icmp_types = [8.5]", "icmp_types", "item 1: expected an ICMP type (8,"),
        ('exclude_sources = "10.0.0.0/8"', "exclude_sources", "expected an array, got a string"),
        (
            'exclude_sources = ["10.0.0.1/8"]',
            "exclude_sources",
            "item 1: '10.0.0.1/8' has host bits set (the /8 prefix of 10.0.0.1 is 10.0.0.0/8)",
        ),
        (
            'include_sources = ["::1", "localhost"]',
            "include_sources",
            "item 2: 'localhost' is not an IPv4 or IPv6 address or prefix",
        ),
        (
            'include_sources = [["10.0.0.0/8"]]',
            "include_sources",
            "item 1: expected an address or prefix such as",
        ),
        (
            f"include_sources = {[str(ip_network(n)) for n in range(MAX_SOURCE_PREFIXES + 1)]}",
            "include_sources",
            f"at most {MAX_SOURCE_PREFIXES} prefixes (the size of the kernel's trie), got 16385",
        ),
        ('prefix_lengths = "v4:24"', "prefix_lengths", "expected an array, got a string"),
        ("prefix_lengths = [24]", "prefix_lengths", "item 1: expected v4:LENGTH or v6:LENGTH"),
        ('prefix_lengths = ["v6:0"]', "prefix_lengths", "item 1: an IPv6 prefix length is 1..128"),
        (
            'prefix_lengths = ["v4:8", "v4:16", "v4:20", "v4:24", "v4:28"]',
            "prefix_lengths",
            "at most 4 v4 lengths (each is one more active_prefixes series per port and protocol)",
        ),
        ("scan_ports = -1", "scan_ports", "must be 0..65535, got -1"),
        ("scan_ports = 65536", "scan_ports", "must be 0..65535, got 65536"),
        ('scan_ports = "10"', "scan_ports", "expected an integer, got a string ('10')"),
        ("scan_ports = false", "scan_ports", "expected an integer, got a boolean (False)"),
        ("scanports = 10", "scanports", "unknown key (did you mean 'scan_ports'?"),
        ("windw = 60", "windw", "unknown key (did you mean 'window'? known keys: interfaces,"),
        ("[server]\nport = 1", "server", "unknown key"),
    ],
)
def test_load_file_rejects(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text + "\n")
    message = error_of(load_file, path)
    assert message.startswith(f"{path}: key '{key}': ")
    assert problem in message


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'window = 60\nports = [22,\ninterfaces = ["lo"]\n')
    message = error_of(load_file, path)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert error_of(load_file, path) == f"{path}: configuration file does not exist"


def test_unreadable_file(tmp_path: Path) -> None:
    assert "cannot read: Is a directory" in error_of(load_file, tmp_path)


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'listen_address = "caf\xe9"\n')
    assert error_of(load_file, path) == f"{path}: not UTF-8 text (byte 21)"


def test_cross_key_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "window = 60\nrefresh_interval = 7\n")
    values = load_file(path)
    message = error_of(
        Settings, **values, origins={"window": "w", "refresh_interval": f"{path}: key 'x'"}
    )
    assert message.startswith(f"{path}: key 'x': the window (60 s)")


# ------------------------------------------------------------------------------------------
# Reload helpers


def test_diff_lists_each_change() -> None:
    old = Settings(interfaces=("lo", "veth0"), window=60)
    new = Settings(interfaces=("lo", "veth1"), ports=PortFilter.of({22}), window=120)
    assert diff(old, new) == [
        "interfaces: lo,veth0 -> lo,veth1 (added veth1; removed veth0)",
        "ports: all -> 22",
        "window: 60 -> 120",
    ]


def test_diff_of_equal_settings_is_empty() -> None:
    assert diff(Settings(window=30), Settings(window=30)) == []


def test_needs_restart_names_what_a_reload_cannot_apply() -> None:
    old = Settings()
    live = Settings(interfaces=("lo",), ports=PortFilter.of({80}), window=120, serve_ip_list=True)
    assert needs_restart(old, live) == []
    restart = Settings(
        listen_address="127.0.0.1", server_port=9000, xdp_mode="native", max_entries=10
    )
    assert needs_restart(old, restart) == [
        "listen_address",
        "server_port",
        "max_entries",
        "xdp_mode",
    ]


def test_a_changed_pin_path_needs_a_restart_and_shows_off_for_empty() -> None:
    old, new = Settings(), Settings(pin_path="/sys/fs/bpf/x")
    assert needs_restart(old, new) == ["pin_path"]
    assert diff(old, new) == ["pin_path: off -> /sys/fs/bpf/x"]
    assert diff(new, old) == ["pin_path: /sys/fs/bpf/x -> off"]


def test_new_source_budget_is_live_and_shown_off_for_0() -> None:
    old, new = Settings(), Settings(new_source_budget=20000)
    assert needs_restart(old, new) == []
    assert diff(old, new) == ["new_source_budget: off -> 20000"]
    assert diff(new, old) == ["new_source_budget: 20000 -> off"]
    assert "max entries 262144; new source budget off;" in old.describe()
    assert "; new source budget 20000;" in new.describe()


def test_the_new_settings_are_live_and_each_shown_in_a_reloads_diff() -> None:
    old = Settings()
    new = Settings(
        protocols=(6, 17, 1, 58),
        icmp_types=((1, 3), (1, 8)),
        exclude_sources=(ip_network("192.0.2.7"),),
        include_sources=(ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")),
        prefix_lengths=((4, 16),),
        scan_ports=0,
    )
    assert needs_restart(old, new) == []
    assert diff(old, new) == [
        "protocols: tcp,udp -> tcp,udp,icmp,icmpv6",
        "icmp_types: icmp:8,icmpv6:128 -> icmp:3,icmp:8",
        "exclude_sources: none -> 192.0.2.7/32",
        "include_sources: none -> 10.0.0.0/8,2001:db8::/32",
        "prefix_lengths: v4:24,v6:48 -> v4:16",
        "scan_ports: 10 -> off",
    ]
    assert diff(new, old) == [
        "protocols: tcp,udp,icmp,icmpv6 -> tcp,udp",
        "icmp_types: icmp:3,icmp:8 -> icmp:8,icmpv6:128",
        "exclude_sources: 192.0.2.7/32 -> none",
        "include_sources: 10.0.0.0/8,2001:db8::/32 -> none",
        "prefix_lengths: v4:16 -> v4:24,v6:48",
        "scan_ports: off -> 10",
    ]


def test_a_long_source_lists_diff_names_what_was_added_and_removed() -> None:
    """The list itself is shown by its first 8 prefixes: the detail says what changed."""
    old = tuple(IPv4Network(f"10.0.{n}.0/24") for n in range(20))
    new = (*old[1:], IPv4Network("10.1.0.0/16"))
    assert diff(Settings(exclude_sources=old), Settings(exclude_sources=new)) == [
        "exclude_sources: 10.0.0.0/24,10.0.1.0/24,10.0.2.0/24,10.0.3.0/24,10.0.4.0/24,"
        "10.0.5.0/24,10.0.6.0/24,10.0.7.0/24,... (20 prefixes) -> 10.0.1.0/24,10.0.2.0/24,"
        "10.0.3.0/24,10.0.4.0/24,10.0.5.0/24,10.0.6.0/24,10.0.7.0/24,10.0.8.0/24,... "
        "(20 prefixes) (added 10.1.0.0/16; removed 10.0.0.0/24)"
    ]
    kept = (IPv4Network("10.3.0.0/16"),)
    many = tuple(IPv4Network(f"10.2.{n}.0/24") for n in range(9))
    (line,) = diff(Settings(include_sources=kept), Settings(include_sources=(*many, *kept)))
    assert line.endswith(
        "(10 prefixes) (added 10.2.0.0/24,10.2.1.0/24,10.2.2.0/24,10.2.3.0/24,10.2.4.0/24,"
        "10.2.5.0/24,10.2.6.0/24,10.2.7.0/24,... (9 prefixes))"
    )
    # From or to an empty list, the list is the detail.
    assert diff(Settings(), Settings(include_sources=kept)) == [
        "include_sources: none -> 10.3.0.0/16"
    ]


def test_the_same_protocols_however_given_are_no_change() -> None:
    assert (
        diff(
            Settings(protocols=parse_protocols("udp,tcp", "x")),
            Settings(protocols=parse_protocols(["TCP", "udp", "tcp"], "y")),
        )
        == []
    )
    assert (
        diff(
            Settings(exclude_sources=parse_sources("192.0.2.7/32,10.0.0.0/8", "x")),
            Settings(exclude_sources=parse_sources(["10.0.0.0/8", "192.0.2.7"], "y")),
        )
        == []
    )


def test_diff_names_interfaces_only_added_or_only_removed() -> None:
    assert diff(Settings(interfaces=("lo",)), Settings(interfaces=("lo", "eth1"))) == [
        "interfaces: lo -> lo,eth1 (added eth1)"
    ]
    assert diff(Settings(interfaces=("eth1", "lo")), Settings(interfaces=("lo", "eth1"))) == [
        "interfaces: eth1,lo -> lo,eth1"
    ]


# ------------------------------------------------------------------------------------------
# Interfaces


def test_validate_interfaces_with_the_real_system() -> None:
    assert validate_interfaces(Settings(interfaces=("lo",))) == {"lo": socket.if_nametoindex("lo")}


def test_validate_interfaces_names_the_missing_one_and_where_it_came_from() -> None:
    known = {"lo": 1, "veth0": 7}

    def name_to_index(name: str) -> int:
        if name not in known:
            raise OSError(19, "No such device")
        return known[name]

    settings = Settings(
        interfaces=("lo", "veth0"), origins={"interfaces": "/etc/x.toml: key 'interfaces'"}
    )
    assert validate_interfaces(settings, name_to_index) == {"lo": 1, "veth0": 7}

    missing = Settings(
        interfaces=("lo", "nosuch0"), origins={"interfaces": "/etc/x.toml: key 'interfaces'"}
    )
    assert (
        error_of(validate_interfaces, missing, name_to_index)
        == "/etc/x.toml: key 'interfaces': interface 'nosuch0' does not exist"
    )
    # A default that does not exist says how to set it.
    message = error_of(validate_interfaces, Settings(interfaces=("nosuch0",)), name_to_index)
    assert "-i/--iface" in message
    assert "interface 'nosuch0' does not exist" in message
