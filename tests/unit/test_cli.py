"""cli.py and __main__: the original flags, flags over file, --help/--version/--check-config."""

from __future__ import annotations

import subprocess
from ipaddress import ip_network
from pathlib import Path

import pytest

from tests.conftest import assert_golden
from tests.support.python import run_python
from xdp_ip_counter import __main__ as entry
from xdp_ip_counter import __version__
from xdp_ip_counter.cli import reload_settings, settings_from_args
from xdp_ip_counter.config import ConfigError, PortFilter, Settings

FIXTURES = Path(__file__).parent / "fixtures"

# The original tool's --help lines, kept word for word (issue 3: the CLI is a contract).
CONTRACT_HELP_LINES = [
    "  -i, --iface <IFACE>              Network Interface to attach eBPF program to "
    "[default: eth0]",
    "  -p, --ports <PORTS>              Comma-separated ports to collect data for. "
    "0 means all ports [default: 0]",
    "  -w, --window <WINDOW>            Sampling interval in seconds. value must be divisable "
    "by 10 [default: 60]",
    "  -s, --server-port <SERVER_PORT>  Port to serve prometheus metrics on "
    "(i.e. HTTP Server Port) [default: 3031]",
    "      --serve-ip-list              Whether to serve a list of connected IP addresses on "
    ":[server_port]/list",
    "  -h, --help                       Print help",
]
ADDED_FLAGS = [
    "-c, --config <PATH>",
    "--fleet-ports <PORTS>",
    "--listen-address <ADDRESS>",
    "--xdp-mode <MODE>",
    "--max-entries <N>",
    "--new-source-budget <N>",
    "--protocols <NAMES>",
    "--icmp-types <TYPES>",
    "--exclude-sources <PREFIXES>",
    "--include-sources <PREFIXES>",
    "--prefix-lengths <LENGTHS>",
    "--scan-ports <N>",
    "--pin-path <DIR>",
    "--web.config.file <PATH>",
    "--check-config",
    "--version",
]


@pytest.fixture
def no_default_config(tmp_path: Path) -> Path:
    """A default configuration path that does not exist."""
    return tmp_path / "default-absent.toml"


def settings(argv: list[str], default_config: Path) -> Settings:
    return settings_from_args(argv, default_config=default_config)


def error_of(argv: list[str], default_config: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        settings_from_args(argv, default_config=default_config)
    return str(caught.value)


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "xdp_ip_counter", *args, env={"COLUMNS": "200"})


# ------------------------------------------------------------------------------------------
# Flags to Settings


def test_no_flags_and_no_file_give_the_defaults(no_default_config: Path) -> None:
    assert settings([], no_default_config) == Settings()
    assert settings([], no_default_config).config_path is None


def test_every_flag(no_default_config: Path) -> None:
    result = settings(
        [
            "-i",
            "lo,veth0",
            "--iface",
            "veth1",
            "-p",
            "22,80,8000-8001",
            "-w",
            "120",
            "-s",
            "9031",
            "--serve-ip-list",
            "--listen-address",
            "::1",
            "--xdp-mode",
            "native",
            "--max-entries",
            "4096",
            "--new-source-budget",
            "20000",
            "--refresh-interval",
            "5",
            "--fleet-ports",
            "80,22",
            "--protocols",
            "udp,icmp,tcp",
            "--icmp-types",
            "icmp:3,8",
            "--exclude-sources",
            "10.1.0.0/16,2001:db8::1",
            "--include-sources",
            "10.0.0.0/8",
            "--prefix-lengths",
            "v4:16,v6:64",
            "--scan-ports",
            "100",
        ],
        no_default_config,
    )
    assert result == Settings(
        interfaces=("lo", "veth0", "veth1"),
        ports=PortFilter.of({22, 80, 8000, 8001}),
        window=120,
        fleet_ports=(22, 80),
        server_port=9031,
        serve_ip_list=True,
        listen_address="::1",
        xdp_mode="native",
        max_entries=4096,
        new_source_budget=20000,
        refresh_interval=5,
        protocols=(6, 17, 1),
        icmp_types=((1, 3), (1, 8), (58, 8)),
        exclude_sources=(ip_network("10.1.0.0/16"), ip_network("2001:db8::1/128")),
        include_sources=(ip_network("10.0.0.0/8"),),
        prefix_lengths=((4, 16), (6, 64)),
        scan_ports=100,
    )


def test_long_forms(no_default_config: Path) -> None:
    result = settings(
        ["--iface", "lo", "--ports", "0", "--window", "10", "--server-port", "1"],
        no_default_config,
    )
    assert (result.interfaces, result.ports, result.window, result.server_port) == (
        ("lo",),
        PortFilter.all(),
        10,
        1,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-w", "0"], "argument -w/--window: must be a positive multiple of 10 (seconds), got 0"),
        (["-w", "15"], "argument -w/--window: must be a positive multiple of 10 (seconds), got 15"),
        (["-w", "sixty"], "argument -w/--window: expected an integer, got 'sixty'"),
        (["-w", "1.5"], "argument -w/--window: expected an integer, got '1.5'"),
        (["-p", "65536"], "argument -p/--ports: item 1: port 65536 is outside 0..65535"),
        (["-p", "22,,80"], "argument -p/--ports: item 2: empty item"),
        (["-p", ""], "argument -p/--ports: empty port list (use 0 for all ports)"),
        (["-p", "ssh"], "argument -p/--ports: item 1: 'ssh' is neither a port number nor"),
        (["-p", "8100-8000"], "argument -p/--ports: item 1: range 8100-8000 is reversed"),
        (["-p", "0,22"], "argument -p/--ports: 0 means all ports and cannot be mixed"),
        (["-s", "0"], "argument -s/--server-port: must be 1..65535, got 0"),
        (["-s", "65536"], "argument -s/--server-port: must be 1..65535, got 65536"),
        (["-i", "lo,"], "argument -i/--iface: empty interface name in 'lo,'"),
        (["-i", ""], "argument -i/--iface: empty interface name in ''"),
        (["-i", "lo", "-i", "lo"], "argument -i/--iface: interface 'lo' is listed twice"),
        (["--xdp-mode", "drv"], "argument --xdp-mode: must be one of skb, native"),
        (["--listen-address", "localhost"], "argument --listen-address: 'localhost' is not an"),
        (["--max-entries", "0"], "argument --max-entries: must be 1..134217728, got 0"),
        (
            ["--new-source-budget", "-1"],
            "argument --new-source-budget: must be 0..100000000, got -1",
        ),
        (
            ["--new-source-budget", "100000001"],
            "argument --new-source-budget: must be 0..100000000, got 100000001",
        ),
        (
            ["--new-source-budget", "1e6"],
            "argument --new-source-budget: expected an integer, got '1e6'",
        ),
        (
            ["--new-source-budget", "true"],
            "argument --new-source-budget: expected an integer, got 'true'",
        ),
        (["--new-source-budget"], "argument --new-source-budget: expected one argument"),
        (
            ["--refresh-interval", "7"],
            "argument --refresh-interval: the window (60 s) must be a multiple of "
            "refresh_interval (7 s)",
        ),
        (["--fleet-ports", "ssh"], "argument --fleet-ports: item 1: expected a port number"),
        (["--fleet-ports", "0"], "argument --fleet-ports: item 1: port 0 is outside 1..65535"),
        (
            ["-p", "22", "--fleet-ports", "22,53"],
            "argument --fleet-ports: port 53 is not watched (ports: 22)",
        ),
        (
            ["--fleet-ports", ",".join(map(str, range(1, 18)))],
            "argument --fleet-ports: at most 16 ports",
        ),
        (
            ["--protocols", "tcp,http"],
            "argument --protocols: item 2: expected one of tcp, udp, icmp, icmpv6, sctp, "
            "udplite, dccp, got a string ('http')",
        ),
        (
            ["--protocols", ""],
            "argument --protocols: no protocols: name at least one of tcp, udp, icmp,",
        ),
        (["--protocols", "tcp,"], "argument --protocols: item 2: empty item"),
        (
            ["--icmp-types", "icmp:8,tcp:8"],
            "argument --icmp-types: item 2: 'tcp:8': expected icmp:TYPE or icmpv6:TYPE",
        ),
        (
            ["--icmp-types", "ping"],
            'argument --icmp-types: item 1: expected an ICMP type (8, "icmp:8" or '
            "\"icmpv6:128\"), got a string ('ping')",
        ),
        (
            ["--icmp-types", "icmpv6:256"],
            "argument --icmp-types: item 1: ICMP type 256 is outside 0..255",
        ),
        (
            ["--exclude-sources", "10.0.0.0/8,192.0.2.1/24"],
            "argument --exclude-sources: item 2: '192.0.2.1/24' has host bits set (the /24 "
            "prefix of 192.0.2.1 is 192.0.2.0/24)",
        ),
        (
            ["--exclude-sources", "10.0.0.0/40"],
            "argument --exclude-sources: item 1: '10.0.0.0/40': expected a prefix length 0..32",
        ),
        (
            ["--include-sources", "any"],
            "argument --include-sources: item 1: 'any' is not an IPv4 or IPv6 address or prefix",
        ),
        (
            ["--include-sources", "::ffff:10.0.0.0/104"],
            "argument --include-sources: item 1: '::ffff:10.0.0.0/104' is IPv4-mapped: write "
            "the IPv4 prefix (10.0.0.0/8)",
        ),
        (
            ["--prefix-lengths", "v4:24,/16"],
            "argument --prefix-lengths: item 2: expected v4:LENGTH or v6:LENGTH (such as "
            "\"v4:24\"), got a string ('/16')",
        ),
        (
            ["--prefix-lengths", "v4:33"],
            "argument --prefix-lengths: item 1: an IPv4 prefix length is 1..32, got 33",
        ),
        (
            ["--prefix-lengths", "v6:32,v6:40,v6:48,v6:56,v6:64"],
            "argument --prefix-lengths: at most 4 v6 lengths",
        ),
        (["--scan-ports", "-1"], "argument --scan-ports: must be 0..65535, got -1"),
        (["--scan-ports", "65536"], "argument --scan-ports: must be 0..65535, got 65536"),
        (["--scan-ports", "ten"], "argument --scan-ports: expected an integer, got 'ten'"),
        (["--scan-ports"], "argument --scan-ports: expected one argument"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--serve"], "unrecognized arguments: --serve"),  # no abbreviations
        (["-w"], "argument -w/--window: expected one argument"),
        (["extra"], "unrecognized arguments: extra"),
    ],
)
def test_bad_flags(argv: list[str], message: str, no_default_config: Path) -> None:
    assert error_of(argv, no_default_config).startswith(message)


# ------------------------------------------------------------------------------------------
# The configuration file and the flags over it


def test_missing_default_file_is_fine(no_default_config: Path) -> None:
    assert settings(["-i", "lo"], no_default_config).interfaces == ("lo",)


def test_missing_named_file_is_an_error(tmp_path: Path, no_default_config: Path) -> None:
    named = tmp_path / "named.toml"
    assert error_of(["-c", str(named)], no_default_config) == (
        f"{named}: configuration file does not exist"
    )


def test_default_file_is_read_when_present(tmp_path: Path) -> None:
    default = tmp_path / "config.toml"
    default.write_text('interfaces = ["lo"]\nwindow = 30\n')
    result = settings([], default)
    assert (result.interfaces, result.window, result.config_path) == (("lo",), 30, default)


def test_flags_override_only_what_they_name(tmp_path: Path, no_default_config: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'interfaces = ["lo"]\nports = [22, "8000-8001"]\nwindow = 120\nserver_port = 9031\n'
        "serve_ip_list = true\n"
    )
    result = settings(["-c", str(path), "-w", "30", "-p", "443"], no_default_config)
    assert result.window == 30  # flag
    assert result.ports == PortFilter.of({443})  # flag
    assert result.interfaces == ("lo",)  # file
    assert result.server_port == 9031  # file
    assert result.serve_ip_list is True  # file (the flag can only turn it on)
    assert result.listen_address == "0.0.0.0"  # default
    assert result.config_path == path
    assert result.origins["window"] == "argument -w/--window"
    assert result.origins["interfaces"] == f"{path}: key 'interfaces'"


def test_flag_error_names_the_flag_not_the_file(tmp_path: Path, no_default_config: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("window = 60\n")
    assert error_of(["-c", str(path), "-w", "25"], no_default_config).startswith(
        "argument -w/--window: "
    )


def test_file_error_is_reported_even_when_a_flag_overrides_the_key(
    tmp_path: Path, no_default_config: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("window = 25\n")
    assert error_of(["-c", str(path), "-w", "60"], no_default_config) == (
        f"{path}: key 'window': must be a positive multiple of 10 (seconds), got 25"
    )


def test_cross_key_error_names_the_file_key(tmp_path: Path, no_default_config: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("refresh_interval = 20\n")
    assert error_of(["-c", str(path), "-w", "30"], no_default_config).startswith(
        f"{path}: key 'refresh_interval': the window (30 s) must be a multiple of"
    )


def test_relative_config_path_is_made_absolute(
    tmp_path: Path, no_default_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rel.toml").write_text('interfaces = ["lo"]\n')
    monkeypatch.chdir(tmp_path)
    assert settings(["-c", "rel.toml"], no_default_config).config_path == tmp_path / "rel.toml"


def test_reload_reads_the_file_again_and_keeps_the_flags(
    tmp_path: Path, no_default_config: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\nports = [22]\nwindow = 60\n')
    argv = ["-c", str(path), "-w", "30"]
    first = reload_settings(argv, default_config=no_default_config)
    assert (first.ports, first.window) == (PortFilter.of({22}), 30)

    path.write_text('interfaces = ["lo"]\nports = [80, 443]\nwindow = 120\n')
    second = reload_settings(argv, default_config=no_default_config)
    assert (second.ports, second.window) == (PortFilter.of({80, 443}), 30)

    path.write_text('interfaces = ["lo"]\nports = [80, 443\n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        reload_settings(argv, default_config=no_default_config)

    path.write_text('interfaces = ["lo", "nosuch0"]\n')
    with pytest.raises(ConfigError, match="interface 'nosuch0' does not exist"):
        reload_settings(argv, default_config=no_default_config)


# ------------------------------------------------------------------------------------------
# The command as a whole


def test_help_keeps_the_contract() -> None:
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Usage: xdp-ip-counter [OPTIONS]"
    assert "An eBPF XDP program that helps with finding IP addresses" in result.stdout
    for line in CONTRACT_HELP_LINES:
        assert line in lines, f"missing from --help: {line!r}"
    for flag in ADDED_FLAGS:
        assert flag in result.stdout
    assert "--refresh-interval" not in result.stdout


def test_help_is_the_text_written_out_before_the_settings_table() -> None:
    """The whole --help, byte for byte: the flags come from config.SETTINGS now, and this is the
    text of the flags as they were written out by hand (UPDATE_GOLDEN=1 accepts a change)."""
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    assert_golden(FIXTURES / "help.txt", result.stdout.encode())


def test_short_help_flag() -> None:
    result = run_module("-h")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: xdp-ip-counter [OPTIONS]\n")


def test_version() -> None:
    result = run_module("--version")
    assert (result.returncode, result.stdout) == (0, f"xdp-ip-counter {__version__}\n")


def test_check_config_ok(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\nports = [22, "8000-8100"]\nwindow = 30\n')
    result = run_module("--check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configuration OK: interfaces lo; ports 22,8000-8100; ")
    assert f"config file {path}" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('interfaces = ["lo"]\nwindow = 15\n', "key 'window': must be a positive multiple of 10"),
        ('interfaces = ["lo"]\nport = [22]\n', "key 'port': unknown key (did you mean 'ports'?"),
        ('interfaces = ["nosuch0"]\n', "key 'interfaces': interface 'nosuch0' does not exist"),
        ('interfaces = ["lo"\n', "invalid TOML"),
    ],
)
def test_check_config_bad_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    result = run_module("--check-config", "-c", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"xdp-ip-counter: error: {path}: ")
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1  # one line


def test_fleet_ports_from_the_file_and_the_flag(tmp_path: Path, no_default_config: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\nports = [22, 53]\nfleet_ports = [53]\n')
    assert settings(["-c", str(path)], no_default_config).fleet_ports == (53,)
    assert settings(["-c", str(path), "--fleet-ports", "22"], no_default_config).fleet_ports == (
        22,
    )
    assert settings(["-c", str(path), "--fleet-ports", ""], no_default_config).fleet_ports == ()
    # Ports narrowed by the flag: the file's fleet port is named, where it came from.
    assert error_of(["-c", str(path), "-p", "22"], no_default_config) == (
        f"{path}: key 'fleet_ports': port 53 is not watched (ports: 22)"
    )


@pytest.mark.parametrize(
    ("text", "flags", "expected"),
    [
        (
            'interfaces = ["lo"]\nports = [22]\nfleet_ports = [53]\n',
            [],
            "xdp-ip-counter: error: {path}: key 'fleet_ports': port 53 is not watched "
            "(ports: 22)\n",
        ),
        (
            'interfaces = ["lo"]\nfleet_ports = "53"\n',
            [],
            "xdp-ip-counter: error: {path}: key 'fleet_ports': expected an array, got a string "
            "('53')\n",
        ),
        (
            'interfaces = ["lo"]\nports = [22]\n',
            ["--fleet-ports", "22,53"],
            "xdp-ip-counter: error: argument --fleet-ports: port 53 is not watched (ports: 22)\n",
        ),
        (
            'interfaces = ["lo"]\n',
            ["--fleet-ports", "dns"],
            "xdp-ip-counter: error: argument --fleet-ports: item 1: expected a port number, got "
            "a string ('dns')\n",
        ),
    ],
)
def test_check_config_names_a_bad_fleet_port(
    tmp_path: Path, text: str, flags: list[str], expected: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    result = run_module("--check-config", "-c", str(path), *flags)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == expected.format(path=path)


def test_new_source_budget_from_the_file_and_the_flag(
    tmp_path: Path, no_default_config: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\nnew_source_budget = 20000\n')
    from_file = settings(["-c", str(path)], no_default_config)
    assert from_file.new_source_budget == 20000
    assert from_file.origins["new_source_budget"] == f"{path}: key 'new_source_budget'"
    from_flag = settings(["-c", str(path), "--new-source-budget", "0"], no_default_config)
    assert from_flag.new_source_budget == 0
    assert from_flag.origins["new_source_budget"] == "argument --new-source-budget"


@pytest.mark.parametrize(
    ("text", "flags", "expected"),
    [
        (
            "new_source_budget = -5\n",
            [],
            "{path}: key 'new_source_budget': must be 0..100000000, got -5",
        ),
        (
            "new_source_budget = true\n",
            [],
            "{path}: key 'new_source_budget': expected an integer, got a boolean (True)",
        ),
        (
            'new_source_budget = "20000"\n',
            [],
            "{path}: key 'new_source_budget': expected an integer, got a string ('20000')",
        ),
        (
            "new_source_budget = 100000001\n",
            [],
            "{path}: key 'new_source_budget': must be 0..100000000, got 100000001",
        ),
        (
            "",
            ["--new-source-budget", "-5"],
            "argument --new-source-budget: must be 0..100000000, got -5",
        ),
        (
            "",
            ["--new-source-budget", "lots"],
            "argument --new-source-budget: expected an integer, got 'lots'",
        ),
    ],
)
def test_check_config_exits_2_on_a_bad_new_source_budget(
    tmp_path: Path, text: str, flags: list[str], expected: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\n' + text)
    result = run_module("--check-config", "-c", str(path), *flags)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"xdp-ip-counter: error: {expected.format(path=path)}\n"


NEW_SETTINGS_FILE = """interfaces = ["lo"]
protocols = ["tcp", "icmpv6"]
icmp_types = ["icmpv6:128", "icmpv6:1"]
exclude_sources = ["2001:db8:1::/48"]
include_sources = ["2001:db8::/32", "192.0.2.0/24"]
prefix_lengths = ["v6:56"]
scan_ports = 50
"""


def test_the_new_settings_from_the_file_and_the_flags(
    tmp_path: Path, no_default_config: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(NEW_SETTINGS_FILE)
    from_file = settings(["-c", str(path)], no_default_config)
    assert from_file.protocols == (6, 58)
    assert from_file.icmp_types == ((58, 1), (58, 128))
    assert from_file.exclude_sources == (ip_network("2001:db8:1::/48"),)
    assert from_file.include_sources == (ip_network("192.0.2.0/24"), ip_network("2001:db8::/32"))
    assert from_file.prefix_lengths == ((6, 56),)
    assert from_file.scan_ports == 50
    for key in ("protocols", "icmp_types", "exclude_sources", "include_sources"):
        assert from_file.origins[key] == f"{path}: key '{key}'"

    flags = [
        *("--protocols", "sctp"),
        *("--icmp-types", ""),
        *("--exclude-sources", ""),
        *("--include-sources", "198.51.100.7"),
        *("--prefix-lengths", "v4:24"),
        *("--scan-ports", "0"),
    ]
    from_flags = settings(["-c", str(path), *flags], no_default_config)
    assert from_flags == Settings(
        interfaces=("lo",),
        protocols=(132,),
        icmp_types=(),
        exclude_sources=(),
        include_sources=(ip_network("198.51.100.7/32"),),
        prefix_lengths=((4, 24),),
        scan_ports=0,
        config_path=path,
    )
    assert from_flags.origins["scan_ports"] == "argument --scan-ports"
    assert from_flags.origins["include_sources"] == "argument --include-sources"


def test_check_config_summarises_the_new_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(NEW_SETTINGS_FILE)
    assert entry.main(["--check-config", "-c", str(path)]) == 0
    assert (
        "; protocols tcp,icmpv6 (icmp types icmpv6:1,icmpv6:128); "
        "sources 192.0.2.0/24,2001:db8::/32 except 2001:db8:1::/48; prefix lengths v6:56; "
        f"scan ports 50; config file {path}\n"
    ) in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "flags", "expected"),
    [
        ('protocols = "tcp"\n', [], "{path}: key 'protocols': expected an array, got a string"),
        ("protocols = []\n", [], "{path}: key 'protocols': no protocols: name at least one of"),
        (
            'protocols = ["tcp", "igmp"]\n',
            [],
            "{path}: key 'protocols': item 2: expected one of tcp, udp, icmp, icmpv6, sctp,",
        ),
        (
            'icmp_types = ["icmp:echo"]\n',
            [],
            "{path}: key 'icmp_types': item 1: expected an ICMP type",
        ),
        (
            'exclude_sources = ["10.0.0.0/8", "10.1.2.3/16"]\n',
            [],
            "{path}: key 'exclude_sources': item 2: '10.1.2.3/16' has host bits set",
        ),
        (
            'include_sources = ["fe80::1%lo"]\n',
            [],
            "{path}: key 'include_sources': item 1: 'fe80::1%lo': a source prefix has no scope",
        ),
        ('prefix_lengths = ["v4:64"]\n', [], "{path}: key 'prefix_lengths': item 1: an IPv4"),
        ("scan_ports = 70000\n", [], "{path}: key 'scan_ports': must be 0..65535, got 70000"),
        ("scan_port = 10\n", [], "{path}: key 'scan_port': unknown key (did you mean"),
        ("", ["--protocols", "tcp,ucp"], "argument --protocols: item 2: expected one of"),
        ("", ["--icmp-types", "icmp:8:1"], "argument --icmp-types: item 1: expected an ICMP"),
        ("", ["--exclude-sources", "10/8"], "argument --exclude-sources: item 1: '10/8' is not"),
        ("", ["--include-sources", "::1/200"], "argument --include-sources: item 1: '::1/200':"),
        ("", ["--prefix-lengths", "v4"], "argument --prefix-lengths: item 1: expected v4:LENGTH"),
        ("", ["--scan-ports", "1.5"], "argument --scan-ports: expected an integer, got '1.5'"),
        ("", ["--scan-port", "5"], "unrecognized arguments: --scan-port 5"),
    ],
)
def test_check_config_exits_2_on_a_bad_new_setting(
    tmp_path: Path,
    text: str,
    flags: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\n' + text)
    assert entry.main(["--check-config", "-c", str(path), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"xdp-ip-counter: error: {expected.format(path=path)}")
    assert captured.err.count("\n") == 1


def test_check_config_exits_2_on_a_bad_source_list_as_a_command(tmp_path: Path) -> None:
    """The same, through the installed entry point's process: exit code and one line."""
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\nexclude_sources = ["192.0.2.1/24"]\n')
    result = run_module("--check-config", "-c", str(path))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"xdp-ip-counter: error: {path}: key 'exclude_sources': item 1: '192.0.2.1/24' has host "
        "bits set (the /24 prefix of 192.0.2.1 is 192.0.2.0/24)\n"
    )


def test_check_config_bad_flag(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\n')
    result = run_module("--check-config", "-c", str(path), "-p", "0,22")
    assert result.returncode == 2
    assert result.stderr == (
        "xdp-ip-counter: error: argument -p/--ports: "
        "0 means all ports and cannot be mixed with other ports\n"
    )


def test_check_config_missing_named_file(tmp_path: Path) -> None:
    result = run_module("--check-config", "-c", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "absent.toml: configuration file does not exist" in result.stderr


def test_main_turns_errors_into_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\n')
    assert entry.main(["-c", str(path), "--unknown"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "xdp-ip-counter: error: unrecognized arguments: --unknown\n"
    assert captured.out == ""


def test_check_config_does_not_load_the_daemon(tmp_path: Path) -> None:
    # In a fresh interpreter: in this one, other tests may have imported the daemon already.
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\n')
    program = (
        "import sys\n"
        "from xdp_ip_counter.__main__ import main\n"
        f"code = main(['--check-config', '-c', {str(path)!r}])\n"
        "print(code, sorted({'bcc', 'xdp_ip_counter.daemon'} & set(sys.modules)))\n"
    )
    result = run_python("-c", program)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 []"


# What a reload refuses: ExecReload= runs --check-config before the SIGHUP, so that a file the
# daemon would refuse fails `systemctl reload` instead; the daemon reloads with reload_settings.
@pytest.mark.parametrize(
    "text",
    [
        'interfaces = ["lo"]\nwindow = 15\n',
        'interfaces = ["lo"]\nport = [22]\n',
        'interfaces = ["nosuch0"]\n',
        'interfaces = ["lo"]\nweb_config_file = "WEB"\n',
        'interfaces = ["lo"]\nweb_config_file = "ABSENT"\n',
        'interfaces = ["lo"\n',
    ],
)
def test_check_config_refuses_what_a_reload_refuses(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: plain-text-password\n")
    path = tmp_path / "config.toml"
    path.write_text(text.replace("WEB", str(web)).replace("ABSENT", str(tmp_path / "absent.yml")))
    with pytest.raises(ConfigError) as caught:
        reload_settings(["-c", str(path)])
    assert entry.main(["--check-config", "-c", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"xdp-ip-counter: error: {caught.value}\n"
    assert captured.out == ""


def test_check_config_passes_a_setting_that_needs_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check knows no running daemon: a changed max_entries is valid, and a reload logs
    that it waits for a restart (it does not fail the reload)."""
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\nmax_entries = 65536\n')
    assert entry.main(["--check-config", "-c", str(path)]) == 0
    assert "max entries 65536" in capsys.readouterr().out
