"""config.py: port lists, the TOML file, Settings' checks, diff/needs_restart, interfaces."""

from __future__ import annotations

import socket
from dataclasses import fields
from pathlib import Path

import pytest

from xdp_ip_counter.config import (
    FILE_KEYS,
    MAX_ENTRIES_LIMIT,
    MAX_FLEET_PORTS,
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
    parse_ports,
    validate_interfaces,
)

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
