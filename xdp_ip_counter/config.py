"""Settings: what to watch and how to serve it, from the TOML file and the command line.

Each setting is declared once, in SETTINGS (key, flags, help, file types, check, live or
restart), and a field of `Settings` (type and default). `load_file` turns a TOML file into typed
field values, `Settings` checks every value (so a Settings that exists is a valid one), and every
error is a `ConfigError` whose message starts with where the bad value came from:
"/etc/xdp-ip-counter/config.toml: key 'window': ...", "argument -w/--window: ...". The command
line (cli.py) builds its flags from SETTINGS and layers them over the file.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

from xdp_ip_counter.layout import (
    DEFAULT_ICMP_TYPES,
    DEFAULT_PROTOCOLS,
    FAMILIES,
    ICMP_PROTOCOLS,
    PROTOCOL_NUMBERS,
    PROTOCOLS,
)

DEFAULT_CONFIG_PATH = Path("/etc/xdp-ip-counter/config.toml")

# The window is made of 10 s steps (the original tool's rule, kept as part of the CLI contract).
WINDOW_STEP = 10

# The sources table takes 72 bytes of kernel memory per entry, allocated at start: 2**27 entries
# are already 9 GiB, so a larger number is a typo, and it is better to say so here than to fail
# at load time.
MAX_ENTRIES_LIMIT = 1 << 27

# New sources per second and CPU: 10**8 is more than a CPU can parse; a larger number is a typo.
NEW_SOURCE_BUDGET_LIMIT = 100_000_000

XDP_MODES = ("skb", "native")

# Linux interface names: at most IFNAMSIZ - 1 bytes, no '/', no whitespace (dev_valid_name()).
IFNAME_MAX_BYTES = 15
_IFNAME_FORBIDDEN = re.compile(r"[/:\s]")


def valid_interface_name(name: str) -> bool:
    """Whether the kernel would take name for an interface (its dev_valid_name()): 1 to 15
    bytes, no '/', ':' or whitespace, not '.' or '..'. The interfaces setting and /list's
    iface filter both ask here."""
    return (
        0 < len(name.encode()) <= IFNAME_MAX_BYTES
        and name not in (".", "..")
        and not _IFNAME_FORBIDDEN.search(name)
    )


_PORT_TEXT = re.compile(r"[0-9]+")
_RANGE_TEXT = re.compile(r"([0-9]+)\s*-\s*([0-9]+)")
_INTEGER_TEXT = re.compile(r"-?[0-9]+")


class ConfigError(Exception):
    """A setting that cannot be used. str() is one line: '<where>: <problem>'.

    `where` is None for command-line usage errors, whose message already says which argument.
    """

    def __init__(self, where: str | None, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where
        self.problem = problem


def file_key(path: Path | str, key: str) -> str:
    """Where a value came from, for a key in a configuration file."""
    return f"{path}: key '{key}'"


def _describe_value(value: object) -> str:
    """The TOML-ish type and value of something that was not what we wanted, for messages."""
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        ((list, tuple), "an array"),
        (dict, "a table"),
    ]
    for kind, name in kinds:
        if isinstance(value, kind):
            shown = repr(value)
            if len(shown) > 40:
                shown = shown[:37] + "..."
            return f"{name} ({shown})"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------------------------
# Ports


@dataclass(frozen=True)
class PortFilter:
    """Which destination ports are counted: all of them, or a set of ports 1..65535."""

    all_ports: bool
    ports: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.all_ports and self.ports:
            raise ValueError("PortFilter: all_ports with a list of ports")
        if not self.all_ports and not self.ports:
            raise ValueError("PortFilter: no ports (use PortFilter.all() for every port)")
        for port in self.ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"PortFilter: {port!r} is not a port in 1..65535")

    @classmethod
    def all(cls) -> PortFilter:
        """Every port (the contract's "0")."""
        return cls(all_ports=True)

    @classmethod
    def of(cls, ports: Iterable[int]) -> PortFilter:
        """Exactly these ports (1..65535, at least one)."""
        return cls(all_ports=False, ports=frozenset(ports))

    def __contains__(self, port: object) -> bool:
        return self.all_ports or port in self.ports

    def ranges(self) -> list[tuple[int, int]]:
        """The listed ports as sorted, merged (low, high) ranges; [] for all ports."""
        merged: list[tuple[int, int]] = []
        for port in sorted(self.ports):
            if merged and merged[-1][1] == port - 1:
                merged[-1] = (merged[-1][0], port)
            else:
                merged.append((port, port))
        return merged

    def __str__(self) -> str:
        if self.all_ports:
            return "all"
        return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.ranges())


def _parse_port_item(item: object, source: str, position: int) -> tuple[int, int]:
    """One item of a port list as an inclusive (low, high) range. Port 0 is returned as (0, 0)."""
    label = f"item {position}"
    if isinstance(item, bool) or not isinstance(item, int | str):
        raise ConfigError(
            source,
            f'{label}: expected a port number or a "low-high" range, got {_describe_value(item)}',
        )
    if isinstance(item, int):
        low = high = item
    else:
        text = item.strip()
        if not text:
            raise ConfigError(source, f"{label}: empty item")
        if _PORT_TEXT.fullmatch(text):
            low = high = int(text)
        elif match := _RANGE_TEXT.fullmatch(text):
            low, high = int(match.group(1)), int(match.group(2))
        else:
            raise ConfigError(
                source,
                f'{label}: {text!r} is neither a port number nor a "low-high" range',
            )
    for port in (low, high):
        if not 0 <= port <= 65535:
            raise ConfigError(source, f"{label}: port {port} is outside 0..65535")
    if low > high:
        raise ConfigError(source, f"{label}: range {low}-{high} is reversed (write {high}-{low})")
    if low == 0 and high != 0:
        raise ConfigError(
            source, f"{label}: port 0 means all ports and cannot start a range ({low}-{high})"
        )
    return low, high


def parse_ports(value: str | list[Any], source: str) -> PortFilter:
    """A port filter from a CLI string ("22,80,8000-8100", "0") or a TOML list ([22, "8000-8100"]).

    "0", [0] and [] mean every port; 0 cannot be mixed with other ports. `source` says where the
    value came from and starts every error message.
    """
    items: list[Any]
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError(source, "empty port list (use 0 for all ports)")
        items = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(
            source,
            f'expected an array such as [22, 80, "8000-8100"], got {_describe_value(value)}',
        )
    ranges = [_parse_port_item(item, source, n) for n, item in enumerate(items, start=1)]
    if not ranges:
        return PortFilter.all()
    if (0, 0) in ranges:
        if len(ranges) > 1:
            raise ConfigError(source, "0 means all ports and cannot be mixed with other ports")
        return PortFilter.all()
    return PortFilter.of(port for low, high in ranges for port in range(low, high + 1))


MAX_FLEET_PORTS = 16  # 4,096 series per port, family and protocol: keep a scrape bounded


def parse_fleet_ports(value: str | list[Any], source: str) -> tuple[int, ...]:
    """Ports whose sketches are exported for fleet-wide counts: "22,53" or [22, 53]; "" or []
    for none. Single ports only (each costs series), 1..65535, sorted, each once."""
    items: list[Any]
    if isinstance(value, str):
        items = value.split(",") if value.strip() else []
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(
            source, f"expected an array such as [22, 53], got {_describe_value(value)}"
        )
    ports = set()
    for position, item in enumerate(items, start=1):
        if isinstance(item, str) and not item.strip():
            raise ConfigError(source, f"item {position}: empty item")
        port = (
            int(item.strip())
            if isinstance(item, str) and _PORT_TEXT.fullmatch(item.strip())
            else item
        )
        if isinstance(port, bool) or not isinstance(port, int):
            raise ConfigError(
                source, f"item {position}: expected a port number, got {_describe_value(item)}"
            )
        if not 1 <= port <= 65535:
            raise ConfigError(source, f"item {position}: port {port} is outside 1..65535")
        ports.add(port)
    return tuple(sorted(ports))


# --------------------------------------------------------------------------------------------
# Protocols, ICMP types, source lists, prefix lengths

# Each source list is an LPM trie in the kernel made with room for this many prefixes.
MAX_SOURCE_PREFIXES = 16384
# Each length is one more active_prefixes series per port and protocol.
MAX_PREFIX_LENGTHS = 4  # per family
_FAMILY_BITS = {4: 32, 6: 128}
_FAMILY_BY_NAME = {name: family for family, name in FAMILIES.items()}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _items(value: str | list[Any], source: str, example: str) -> list[Any]:
    """A flag's comma-separated text or a TOML array as a list of items; "" and [] are empty."""
    if isinstance(value, str):
        items: list[Any] = value.split(",") if value.strip() else []
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(
            source, f"expected an array such as {example}, got {_describe_value(value)}"
        )
    for position, item in enumerate(items, start=1):
        if isinstance(item, str) and not item.strip():
            raise ConfigError(source, f"item {position}: empty item")
    return [item.strip() if isinstance(item, str) else item for item in items]


def parse_protocols(value: str | list[Any], source: str) -> tuple[int, ...]:
    """Protocols to record, by name: "tcp,udp,icmp" or ["tcp", "udp"]; at least one. Returns
    their IP protocol numbers in the order of layout.PROTOCOLS, each once."""
    chosen = set()
    for position, item in enumerate(_items(value, source, '["tcp", "udp", "icmp"]'), start=1):
        name = item.lower() if isinstance(item, str) else None
        if name not in PROTOCOL_NUMBERS:
            raise ConfigError(
                source,
                f"item {position}: expected one of {', '.join(PROTOCOLS.values())}, "
                f"got {_describe_value(item)}",
            )
        chosen.add(PROTOCOL_NUMBERS[name])
    return tuple(number for number in PROTOCOLS if number in chosen)


def show_protocols(value: tuple[int, ...]) -> str:
    return ",".join(PROTOCOLS[proto] for proto in value)


def parse_icmp_types(value: str | list[Any], source: str) -> tuple[tuple[int, int], ...]:
    """ICMP message types to record, as (protocol number, type): "icmp:8" (ICMP, IPv4),
    "icmpv6:128" (ICMPv6), or a bare type 0..255 for both; "" or [] for none. Sorted, each
    once."""
    chosen: set[tuple[int, int]] = set()
    for position, item in enumerate(_items(value, source, '["icmp:8", "icmpv6:128"]'), start=1):
        protocols: tuple[int, ...] = tuple(ICMP_PROTOCOLS)
        text = item
        if isinstance(item, str) and ":" in item:
            name, _, text = item.partition(":")
            if name.strip().lower() not in ("icmp", "icmpv6"):
                raise ConfigError(
                    source, f"item {position}: {item!r}: expected icmp:TYPE or icmpv6:TYPE"
                )
            protocols = (PROTOCOL_NUMBERS[name.strip().lower()],)
            text = text.strip()
        if isinstance(text, str) and _PORT_TEXT.fullmatch(text):
            text = int(text)
        if isinstance(text, bool) or not isinstance(text, int):
            raise ConfigError(
                source,
                f'item {position}: expected an ICMP type (8, "icmp:8" or "icmpv6:128"), '
                f"got {_describe_value(item)}",
            )
        if not 0 <= text <= 255:
            raise ConfigError(source, f"item {position}: ICMP type {text} is outside 0..255")
        chosen.update((proto, text) for proto in protocols)
    return tuple(sorted(chosen))


def show_icmp_types(value: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{PROTOCOLS[proto]}:{kind}" for proto, kind in value) or "none"


_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _parse_source(item: object, source: str, position: int) -> Network:
    """One item of a source list: "ADDRESS" or "ADDRESS/LENGTH" (CIDR), IPv4 or IPv6."""
    label = f"item {position}"
    if not isinstance(item, str):
        raise ConfigError(
            source,
            f'{label}: expected an address or prefix such as "10.0.0.0/8", '
            f"got {_describe_value(item)}",
        )
    text, slash, length_text = item.partition("/")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(
            source,
            f"{label}: {item!r} is not an IPv4 or IPv6 address or prefix "
            '(such as "192.0.2.7", "10.0.0.0/8", "2001:db8::/32")',
        ) from None
    bits = _FAMILY_BITS[address.version]
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ConfigError(source, f"{label}: {item!r}: a source prefix has no scope (%zone)")
    if slash and not (_PORT_TEXT.fullmatch(length_text) and int(length_text) <= bits):
        raise ConfigError(
            source,
            f"{label}: {item!r}: expected a prefix length 0..{bits} after the '/', "
            f"got {length_text!r}",
        )
    length = int(length_text) if slash else bits
    network = ipaddress.ip_network((address, length), strict=False)
    if network.network_address != address:
        raise ConfigError(
            source,
            f"{label}: {item!r} has host bits set (the /{length} prefix of {address} is {network})",
        )
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        # It would match only IPv6 packets from IPv4-mapped sources (the lists keep the
        # families apart), which hosts do not send: almost surely the IPv4 prefix is meant.
        mapped = network.network_address.ipv4_mapped
        raise ConfigError(
            source,
            f"{label}: {item!r} is IPv4-mapped: write the IPv4 prefix ({mapped}/{length - 96})",
        )
    return network


def parse_sources(value: str | list[Any], source: str) -> tuple[Network, ...]:
    """Source prefixes: "10.0.0.0/8,2001:db8::/32" or ["192.0.2.7", ...] (an address alone is a
    /32 or /128); "" or [] for none. A prefix with host bits set is refused (it is most often a
    typo for a shorter or longer one), and so is an IPv4-mapped IPv6 prefix (write the IPv4
    one). Sorted (IPv4 first), each once; overlapping prefixes are kept as given. The number of
    prefixes (at most MAX_SOURCE_PREFIXES) is checked with the setting."""
    items = _items(value, source, '["10.0.0.0/8", "2001:db8::/32"]')
    networks = {_parse_source(item, source, n) for n, item in enumerate(items, start=1)}
    return tuple(sorted(networks, key=lambda n: (n.version, n.network_address, n.prefixlen)))


def show_sources(value: tuple[Network, ...]) -> str:
    if len(value) > 8:
        return ",".join(map(str, value[:8])) + f",... ({len(value)} prefixes)"
    return ",".join(map(str, value)) or "none"


def parse_prefix_lengths(value: str | list[Any], source: str) -> tuple[tuple[int, int], ...]:
    """Prefix lengths of active_prefixes, as (family, length): "v4:24,v6:48"; "" or [] for
    none. Sorted, each once. The number per family (at most MAX_PREFIX_LENGTHS) is checked
    with the setting."""
    chosen: set[tuple[int, int]] = set()
    for position, item in enumerate(_items(value, source, '["v4:24", "v6:48"]'), start=1):
        name, _, text = item.partition(":") if isinstance(item, str) else ("", "", "")
        family = _FAMILY_BY_NAME.get(name.strip().lower())
        if family is None or not _PORT_TEXT.fullmatch(text.strip()):
            raise ConfigError(
                source,
                f'item {position}: expected v4:LENGTH or v6:LENGTH (such as "v4:24"), '
                f"got {_describe_value(item)}",
            )
        length = int(text)
        if not 1 <= length <= _FAMILY_BITS[family]:
            raise ConfigError(
                source,
                f"item {position}: an IP{name.strip().lower()} prefix length is "
                f"1..{_FAMILY_BITS[family]}, got {length}",
            )
        chosen.add((family, length))
    return tuple(sorted(chosen))


def show_prefix_lengths(value: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{FAMILIES[family]}:{length}" for family, length in value) or "none"


# --------------------------------------------------------------------------------------------
# Checks of one value each: `where` starts the message ("argument -w/--window", "<file>: key ...")


def _check_int(value: object, where: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, f"expected an integer, got {_describe_value(value)}")
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(where, f"must be {bounds}, got {value}")


def _check_interfaces(value: object, where: str) -> None:
    if not isinstance(value, tuple) or not all(isinstance(name, str) for name in value):
        raise ConfigError(
            where, f"expected a list of interface names, got {_describe_value(value)}"
        )
    if not value:
        raise ConfigError(where, "no interfaces: name at least one")
    seen: set[str] = set()
    for name in value:
        if not name:
            raise ConfigError(where, "empty interface name")
        if not valid_interface_name(name):
            raise ConfigError(
                where,
                f"{name!r} is not a valid interface name "
                f"(at most {IFNAME_MAX_BYTES} bytes, no '/', ':' or whitespace, not '.' or '..')",
            )
        if name in seen:
            raise ConfigError(where, f"interface {name!r} is listed twice")
        seen.add(name)


def _check_window(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, f"expected an integer, got {_describe_value(value)}")
    if value <= 0 or value % WINDOW_STEP:
        raise ConfigError(
            where, f"must be a positive multiple of {WINDOW_STEP} (seconds), got {value}"
        )


def _check_listen_address(value: object, where: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(where, f"expected an IP address, got {_describe_value(value)}")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(
            where, f"{value!r} is not an IPv4 or IPv6 address (such as 0.0.0.0, ::, 127.0.0.1)"
        ) from None


def _check_bool(value: object, where: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(where, f"expected true or false, got {_describe_value(value)}")


def _check_xdp_mode(value: object, where: str) -> None:
    if value not in XDP_MODES:
        raise ConfigError(
            where, f"must be one of {', '.join(XDP_MODES)}, got {_describe_value(value)}"
        )


def _check_pin_path(value: object, where: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(where, f"expected a directory path, got {_describe_value(value)}")
    if value and not value.startswith("/"):
        raise ConfigError(
            where, f"must be an absolute path below a BPF filesystem (or empty), got {value!r}"
        )


def _check_web_config_file(value: object, where: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(where, f"expected a file path, got {_describe_value(value)}")
    if value and not value.startswith("/"):
        raise ConfigError(where, f"must be an absolute path (or empty for none), got {value!r}")


def _check_ports(value: object, where: str) -> None:
    if not isinstance(value, PortFilter):
        raise ConfigError(where, f"expected a PortFilter, got {_describe_value(value)}")


def _check_fleet_ports(value: object, where: str) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in value
    ):
        raise ConfigError(where, f"expected ports 1..65535, got {_describe_value(value)}")
    if len(value) > MAX_FLEET_PORTS:
        raise ConfigError(
            where,
            f"at most {MAX_FLEET_PORTS} ports (each exports 16,384 series: 4,096 registers "
            f"per family and protocol), got {len(value)}",
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_protocols(value: object, where: str) -> None:
    if not isinstance(value, tuple) or not all(_is_int(p) and p in PROTOCOLS for p in value):
        raise ConfigError(where, f"expected protocol numbers, got {_describe_value(value)}")
    if not value:
        raise ConfigError(
            where, f"no protocols: name at least one of {', '.join(PROTOCOLS.values())}"
        )


def _check_icmp_types(value: object, where: str) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(item, tuple)
        and len(item) == 2
        and _is_int(item[0])
        and item[0] in ICMP_PROTOCOLS
        and _is_int(item[1])
        and 0 <= item[1] <= 255
        for item in value
    ):
        raise ConfigError(where, f"expected (protocol, type) pairs, got {_describe_value(value)}")


def _check_sources(value: object, where: str) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network) for item in value
    ):
        raise ConfigError(where, f"expected networks, got {_describe_value(value)}")
    if len(value) > MAX_SOURCE_PREFIXES:
        raise ConfigError(
            where,
            f"at most {MAX_SOURCE_PREFIXES} prefixes (the size of the kernel's trie), "
            f"got {len(value)}",
        )


def _check_prefix_lengths(value: object, where: str) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(item, tuple)
        and len(item) == 2
        and _is_int(item[0])
        and item[0] in _FAMILY_BITS
        and _is_int(item[1])
        and 1 <= item[1] <= _FAMILY_BITS[item[0]]
        for item in value
    ):
        raise ConfigError(where, f"expected (family, length) pairs, got {_describe_value(value)}")
    for family, name in FAMILIES.items():
        count = len({length for f, length in value if f == family})
        if count > MAX_PREFIX_LENGTHS:
            raise ConfigError(
                where,
                f"at most {MAX_PREFIX_LENGTHS} {name} lengths (each is one more active_prefixes "
                f"series per port and protocol), got {count}",
            )


# --------------------------------------------------------------------------------------------
# Conversions: a flag's text, or a TOML value of the right type, into the Settings field's type


def _as_given(value: Any, where: str) -> Any:
    return value


def _integer(text: str, where: str) -> int:
    if not _INTEGER_TEXT.fullmatch(text.strip()):
        raise ConfigError(where, f"expected an integer, got {text!r}")
    return int(text)


def _interfaces_from_flags(values: list[str], where: str) -> tuple[str, ...]:
    """-i given once or more, each a name or a comma-separated list of names."""
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            if not name.strip():
                raise ConfigError(where, f"empty interface name in {value!r}")
            names.append(name.strip())
    return tuple(names)


def _interfaces_from_file(value: list[Any], where: str) -> tuple[str, ...]:
    for position, name in enumerate(value, start=1):
        if not isinstance(name, str):
            raise ConfigError(
                where, f"item {position}: expected an interface name, got {_describe_value(name)}"
            )
    return tuple(value)


def _absolute_path(text: str, where: str) -> str:
    """A path given on the command line, made absolute (a reload may run in another cwd)."""
    return str(Path(text).absolute()) if text else ""


def _number_or_off(value: int) -> str:
    """A limit as shown, "off" for 0 (no limit)."""
    return str(value) if value else "off"


def _source_changes(before: tuple[Network, ...], after: tuple[Network, ...]) -> str:
    """What a reload adds and removes, since a long list shows only its first prefixes ("" from
    or to an empty list: the list itself says it)."""
    if not before or not after:
        return ""
    added = tuple(network for network in after if network not in before)
    removed = tuple(network for network in before if network not in after)
    details = [f"added {show_sources(added)}"] if added else []
    details += [f"removed {show_sources(removed)}"] if removed else []
    return "; ".join(details)


def _interface_changes(before: tuple[str, ...], after: tuple[str, ...]) -> str:
    added = [name for name in after if name not in before]
    removed = [name for name in before if name not in after]
    details = [f"added {','.join(added)}"] if added else []
    details += [f"removed {','.join(removed)}"] if removed else []
    return "; ".join(details)


# --------------------------------------------------------------------------------------------
# The settings, each declared once


class Apply(Enum):
    """When a changed value takes effect. A restart-only setting says what start-up makes once;
    needs_restart names the changed ones in this order."""

    LIVE = "applied by a reload"
    SOCKET = "needs a restart: the HTTP socket is bound once at start-up"
    MAP = "needs a restart: the kernel map is created (or taken over from its pin) at start-up"
    # It could be re-attached, but a restart keeps the reload path simple.
    ATTACH = "needs a restart: the attach mode is chosen once at start-up"


@dataclass(frozen=True)
class Setting:
    """One setting: its TOML key, flags, help, file types, check and when a change applies.

    The key is also the Settings field's name, whose annotation and default are the setting's
    type and default. cli.py builds the flags from these declarations, load_file types the file
    with them, Settings checks with them, and diff/needs_restart follow them; the packaged
    config.toml, the Ansible role and the README are checked against them by
    tests/unit/test_settings_docs.py.
    """

    key: str
    flags: tuple[str, ...]
    # None: a switch (a flag without a value that can only turn the setting on).
    metavar: str | None
    # --help text, "[default: ...]" added; None: the flag works but --help does not show it.
    help: str | None
    # The TOML types the key may have (a bool is not an integer here).
    file_types: tuple[type, ...]
    # Raises ConfigError(where, ...) for a value the daemon cannot use.
    check: Callable[[Any, str], None]
    apply: Apply = Apply.LIVE
    # Whether the flag may be given more than once (from_flag then gets the list of values).
    repeatable: bool = False
    # A flag's value (text, a list when repeatable, True for a switch) -> the field's type.
    from_flag: Callable[[Any, str], Any] = _as_given
    # A TOML value of one of file_types -> the field's type.
    from_file: Callable[[Any, str], Any] = _as_given
    # A value as a reload's log and --help show it.
    show: Callable[[Any], str] = str
    # --help's default when it is not show(default) (the command line spells it differently).
    help_default: str | None = None
    # What the reload log adds after "old -> new", or "".
    change_detail: Callable[[Any, Any], str] | None = None
    # One of the original tool's flags, listed first in --help (names and help are a contract).
    original: bool = False

    @property
    def flag(self) -> str:
        """The flags as messages name them: "-w/--window"."""
        return "/".join(self.flags)

    @property
    def restart(self) -> bool:
        """Whether a change waits for a restart."""
        return self.apply is not Apply.LIVE

    @property
    def default(self) -> Any:
        """The Settings field's default."""
        declared = _SETTINGS_FIELDS[self.key]
        if declared.default_factory is not MISSING:
            return declared.default_factory()
        return declared.default

    @property
    def default_text(self) -> str:
        """The default as --help shows it."""
        return self.help_default if self.help_default is not None else self.show(self.default)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        key="interfaces",
        flags=("-i", "--iface"),
        metavar="IFACE",
        help="Network Interface to attach eBPF program to",
        file_types=(list,),
        check=_check_interfaces,
        repeatable=True,
        from_flag=_interfaces_from_flags,
        from_file=_interfaces_from_file,
        show=",".join,
        change_detail=_interface_changes,
        original=True,
    ),
    Setting(
        key="ports",
        flags=("-p", "--ports"),
        metavar="PORTS",
        help="Comma-separated ports to collect data for. 0 means all ports",
        file_types=(list,),
        check=_check_ports,
        from_flag=parse_ports,
        from_file=parse_ports,
        help_default="0",
        original=True,
    ),
    Setting(
        key="window",
        flags=("-w", "--window"),
        metavar="WINDOW",
        help="Sampling interval in seconds. value must be divisable by 10",
        file_types=(int,),
        check=_check_window,
        from_flag=_integer,
        original=True,
    ),
    Setting(
        key="fleet_ports",
        flags=("--fleet-ports",),
        metavar="PORTS",
        help="Comma-separated ports whose sketch registers are exported "
        "(active_users_hll_register) for distinct sources across hosts "
        "(fleet:active_users:union); each must be watched",
        file_types=(list,),
        check=_check_fleet_ports,
        from_flag=parse_fleet_ports,
        from_file=parse_fleet_ports,
        show=lambda value: ",".join(map(str, value)) or "none",
    ),
    Setting(
        key="listen_address",
        flags=("--listen-address",),
        metavar="ADDRESS",
        help="IPv4 or IPv6 address to serve HTTP on",
        file_types=(str,),
        check=_check_listen_address,
        apply=Apply.SOCKET,
    ),
    Setting(
        key="server_port",
        flags=("-s", "--server-port"),
        metavar="SERVER_PORT",
        help="Port to serve prometheus metrics on (i.e. HTTP Server Port)",
        file_types=(int,),
        check=partial(_check_int, low=1, high=65535),
        apply=Apply.SOCKET,
        from_flag=_integer,
        original=True,
    ),
    Setting(
        key="serve_ip_list",
        flags=("--serve-ip-list",),
        metavar=None,
        help="Whether to serve a list of connected IP addresses on :[server_port]/list",
        file_types=(bool,),
        check=_check_bool,
        original=True,
    ),
    Setting(
        key="xdp_mode",
        flags=("--xdp-mode",),
        metavar="MODE",
        help="How to attach: skb (generic XDP, works with every driver) or native (in the "
        "driver, faster, needs driver support)",
        file_types=(str,),
        check=_check_xdp_mode,
        apply=Apply.ATTACH,
    ),
    Setting(
        key="max_entries",
        flags=("--max-entries",),
        metavar="N",
        help="Capacity of the kernel table of (interface, source, protocol, port) entries: "
        "sources it holds exactly; past it, a port's count is its sketch's estimate",
        file_types=(int,),
        check=partial(_check_int, low=1, high=MAX_ENTRIES_LIMIT),
        apply=Apply.MAP,
        from_flag=_integer,
    ),
    Setting(
        key="new_source_budget",
        flags=("--new-source-budget",),
        metavar="N",
        help="New sources per second and CPU that enter the exact table; past it a new source "
        "is counted in its port's sketch only (the count becomes an estimate); 0 for no budget",
        file_types=(int,),
        check=partial(_check_int, low=0, high=NEW_SOURCE_BUDGET_LIMIT),
        from_flag=_integer,
        show=_number_or_off,
    ),
    Setting(
        key="protocols",
        flags=("--protocols",),
        metavar="NAMES",
        help="Comma-separated protocols to record: "
        + ", ".join(PROTOCOLS.values())
        + " (for icmp and icmpv6 the port label is the ICMP type, see --icmp-types)",
        file_types=(list,),
        check=_check_protocols,
        from_flag=parse_protocols,
        from_file=parse_protocols,
        show=show_protocols,
    ),
    Setting(
        key="icmp_types",
        flags=("--icmp-types",),
        metavar="TYPES",
        help="Comma-separated ICMP message types recorded when icmp or icmpv6 is: icmp:TYPE, "
        "icmpv6:TYPE, or a TYPE for both (errors such as unreachable only if listed)",
        file_types=(list,),
        check=_check_icmp_types,
        from_flag=parse_icmp_types,
        from_file=parse_icmp_types,
        show=show_icmp_types,
    ),
    Setting(
        key="exclude_sources",
        flags=("--exclude-sources",),
        metavar="PREFIXES",
        help="Comma-separated source addresses or prefixes (IPv4 and IPv6) never recorded, "
        "even if included",
        file_types=(list,),
        check=_check_sources,
        from_flag=parse_sources,
        from_file=parse_sources,
        show=show_sources,
        change_detail=_source_changes,
    ),
    Setting(
        key="include_sources",
        flags=("--include-sources",),
        metavar="PREFIXES",
        help="Comma-separated source addresses or prefixes (IPv4 and IPv6): when given, only "
        "these sources are recorded",
        file_types=(list,),
        check=_check_sources,
        from_flag=parse_sources,
        from_file=parse_sources,
        show=show_sources,
        change_detail=_source_changes,
    ),
    Setting(
        key="prefix_lengths",
        flags=("--prefix-lengths",),
        metavar="LENGTHS",
        help="Comma-separated prefix lengths (v4:LENGTH, v6:LENGTH) of active_prefixes: "
        "distinct source networks per port",
        file_types=(list,),
        check=_check_prefix_lengths,
        from_flag=parse_prefix_lengths,
        from_file=parse_prefix_lengths,
        show=show_prefix_lengths,
    ),
    Setting(
        key="scan_ports",
        flags=("--scan-ports",),
        metavar="N",
        help="Distinct destination ports a source must try within the window to count in "
        "scanning_sources and /list?scanners=1 (with all ports or a wide range watched); 0 for "
        "off",
        file_types=(int,),
        check=partial(_check_int, low=0, high=65535),
        from_flag=_integer,
        show=_number_or_off,
    ),
    # Not in --help: shorter refresh cycles are for tests (the key is documented).
    Setting(
        key="refresh_interval",
        flags=("--refresh-interval",),
        metavar="SECONDS",
        help=None,
        file_types=(int,),
        check=partial(_check_int, low=1),
        from_flag=_integer,
    ),
    Setting(
        key="pin_path",
        flags=("--pin-path",),
        metavar="DIR",
        help="Keep the map of sources pinned in this bpffs directory, so that a restarted daemon "
        "carries on with what was seen before; empty to disable",
        file_types=(str,),
        check=_check_pin_path,
        apply=Apply.MAP,
        show=lambda value: value or "off",
    ),
    Setting(
        key="web_config_file",
        flags=("--web.config.file",),
        metavar="PATH",
        help="Web configuration file (YAML, the Prometheus exporter-toolkit format) that turns on "
        "TLS and/or basic authentication; re-read on SIGHUP",
        file_types=(str,),
        check=_check_web_config_file,
        from_flag=_absolute_path,
        show=lambda value: value or "none",
    ),
)

SETTING_BY_KEY: Mapping[str, Setting] = MappingProxyType({s.key: s for s in SETTINGS})
FILE_KEYS = tuple(SETTING_BY_KEY)
# The flag that sets each key, for messages about defaults.
FLAG_FOR_KEY = MappingProxyType({s.key: s.flag for s in SETTINGS})
# The keys whose change needs a restart, in the order of Apply.
RESTART_FIELDS = tuple(
    s.key for s in sorted(SETTINGS, key=lambda s: list(Apply).index(s.apply)) if s.restart
)


@dataclass(frozen=True)
class Settings:
    """Everything the daemon needs to know; checked on construction.

    One field per Setting in SETTINGS (same name, same order), with its type and default.
    `origins` maps a field name to where its value came from ("argument -w/--window",
    "/etc/...: key 'window'"), for messages; fields not in it are named as defaults.
    """

    interfaces: tuple[str, ...] = ("eth0",)
    ports: PortFilter = field(default_factory=PortFilter.all)
    window: int = 60
    fleet_ports: tuple[int, ...] = ()
    listen_address: str = "0.0.0.0"
    server_port: int = 3031
    serve_ip_list: bool = False
    xdp_mode: str = "skb"
    max_entries: int = 262144
    new_source_budget: int = 0  # new sources per second and CPU into the table; 0 = no budget
    protocols: tuple[int, ...] = DEFAULT_PROTOCOLS  # IP protocol numbers (layout.PROTOCOLS)
    icmp_types: tuple[tuple[int, int], ...] = DEFAULT_ICMP_TYPES  # (protocol, type)
    exclude_sources: tuple[Network, ...] = ()
    include_sources: tuple[Network, ...] = ()  # () = every source
    prefix_lengths: tuple[tuple[int, int], ...] = ((4, 24), (6, 48))  # (family, length)
    scan_ports: int = 10  # 0 = off
    refresh_interval: int = 10
    pin_path: str = ""  # a bpffs directory to keep the sources map in across restarts; "" = off
    web_config_file: str = ""  # TLS and basic auth (exporter-toolkit format, web/config.py); "" off
    config_path: Path | None = None
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origins", MappingProxyType(dict(self.origins)))
        for setting in SETTINGS:
            setting.check(getattr(self, setting.key), self.origin(setting.key))
        if self.window % self.refresh_interval:
            blamed = "refresh_interval" if "refresh_interval" in self.origins else "window"
            raise ConfigError(
                self.origin(blamed),
                f"the window ({self.window} s) must be a multiple of refresh_interval "
                f"({self.refresh_interval} s)",
            )
        unwatched = [p for p in self.fleet_ports if p not in self.ports]
        if unwatched:
            raise ConfigError(
                self.origin("fleet_ports"),
                f"port {unwatched[0]} is not watched (ports: {self.ports})",
            )

    def origin(self, name: str) -> str:
        """Where the value of field `name` came from, as a message prefix."""
        if name in self.origins:
            return self.origins[name]
        return f"default {name} (set it with {FLAG_FOR_KEY[name]} or key '{name}')"

    def describe(self) -> str:
        """One line: what is watched and where it is served."""
        listen = f"[{self.listen_address}]" if ":" in self.listen_address else self.listen_address
        source = str(self.config_path) if self.config_path else "none"
        ip_list = "on" if self.serve_ip_list else "off"
        web = f", web config file {self.web_config_file}" if self.web_config_file else ""
        recorded_icmp = [proto for proto in self.protocols if proto in ICMP_PROTOCOLS]
        icmp_types = tuple(item for item in self.icmp_types if item[0] in recorded_icmp)
        icmp = f" (icmp types {show_icmp_types(icmp_types)})" if recorded_icmp else ""
        sources = show_sources(self.include_sources) if self.include_sources else "all"
        if self.exclude_sources:
            sources += f" except {show_sources(self.exclude_sources)}"
        return (
            f"interfaces {','.join(self.interfaces)}; ports {self.ports}; "
            f"window {self.window}s (refresh every {self.refresh_interval}s); "
            f"serving {listen}:{self.server_port}, ip list {ip_list}{web}; "
            f"xdp mode {self.xdp_mode}; max entries {self.max_entries}; "
            f"new source budget {_number_or_off(self.new_source_budget)}; "
            f"fleet ports {','.join(map(str, self.fleet_ports)) or 'none'}; "
            f"protocols {show_protocols(self.protocols)}{icmp}; "
            f"sources {sources}; prefix lengths {show_prefix_lengths(self.prefix_lengths)}; "
            f"scan ports {_number_or_off(self.scan_ports)}; config file {source}"
        )


_SETTINGS_FIELDS = {declared.name: declared for declared in fields(Settings)}


def diff(old: Settings, new: Settings) -> list[str]:
    """One line per setting that differs, "window: 60 -> 120", in declaration order."""
    changes: list[str] = []
    for setting in SETTINGS:
        before, after = getattr(old, setting.key), getattr(new, setting.key)
        if before == after:
            continue
        line = f"{setting.key}: {setting.show(before)} -> {setting.show(after)}"
        if setting.change_detail and (detail := setting.change_detail(before, after)):
            line += f" ({detail})"
        changes.append(line)
    return changes


def needs_restart(old: Settings, new: Settings) -> list[str]:
    """Names of the fields that changed but cannot be applied by a reload."""
    return [name for name in RESTART_FIELDS if getattr(old, name) != getattr(new, name)]


def validate_interfaces(
    settings: Settings, name_to_index: Callable[[str], int] = socket.if_nametoindex
) -> dict[str, int]:
    """Check that every interface exists now; returns name -> ifindex.

    Separate from parsing because it asks the running system (tests inject `name_to_index`).
    """
    indexes: dict[str, int] = {}
    for name in settings.interfaces:
        try:
            indexes[name] = name_to_index(name)
        except OSError:
            raise ConfigError(
                settings.origin("interfaces"), f"interface {name!r} does not exist"
            ) from None
    return indexes


# --------------------------------------------------------------------------------------------
# The TOML file

_TYPE_NAMES = {list: "an array", int: "an integer", str: "a string", bool: "true or false"}


def _file_value(setting: Setting, value: object, where: str) -> object:
    """A file value type-checked and converted to the Settings field's type."""
    expected = setting.file_types
    if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
        wanted = " or ".join(_TYPE_NAMES[t] for t in expected)
        raise ConfigError(where, f"expected {wanted}, got {_describe_value(value)}")
    return setting.from_file(value, where)


def load_file(path: Path) -> dict[str, Any]:
    """Read a TOML configuration file into Settings field values, keyed by field name.

    Unknown keys, wrong types, values out of range and TOML syntax errors raise ConfigError naming
    the file (and the key or line). Rules across keys (refresh_interval divides window) are
    checked by Settings, once flags are layered over the file.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "configuration file does not exist") from None
    except OSError as error:
        raise ConfigError(str(path), f"cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(str(path), f"not UTF-8 text (byte {error.start})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), f"invalid TOML: {error}") from None

    values: dict[str, Any] = {}
    for key, value in document.items():
        where = file_key(path, key)
        setting = SETTING_BY_KEY.get(key)
        if setting is None:
            close = difflib.get_close_matches(key, FILE_KEYS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(where, f"unknown key ({hint}known keys: {', '.join(FILE_KEYS)})")
        values[key] = _file_value(setting, value, where)
        # Each key is valid on its own, whatever flags may override it on this command line.
        setting.check(values[key], where)
    return values
