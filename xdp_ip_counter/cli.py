"""The command line: the original tool's flags (a contract), layered over the TOML file.

Only flags actually given override the file: every flag defaults to None, and the defaults shown
in --help are Settings' own. Usage errors raise ConfigError too, so that __main__ turns every bad
input into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from xdp_ip_counter import __version__
from xdp_ip_counter.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    file_key,
    load_file,
    parse_ports,
    validate_interfaces,
)
from xdp_ip_counter.webconfig import load_web_config

PROG = "xdp-ip-counter"

DESCRIPTION = (
    "An eBPF XDP program that helps with finding IP addresses that have tried to reach out to a "
    "specific port during a certain interval. Metrics are served in prometheus format on "
    ":[server_port]/metrics and IPs are available on :[server_port]/list"
)

EPILOG = (
    "Settings are read from the configuration file first; flags given on the command line "
    "override its keys. Each setting has a key in the file named like its flag, with '_' for "
    "'-' (--iface is interfaces). SIGHUP re-reads the file and applies the same flags again."
)

_INTEGER_TEXT = re.compile(r"-?[0-9]+")


class _ContractHelpFormatter(argparse.HelpFormatter):
    """--help laid out as the original tool's: "-i, --iface <IFACE>", "Usage:", help at col 35."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=35)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        short = [option for option in action.option_strings if not option.startswith("--")]
        long = [option for option in action.option_strings if option.startswith("--")]
        text = ", ".join(short + long) if short else "    " + ", ".join(long)
        if action.nargs != 0:
            text += f" <{action.metavar}>"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        # Paths and "8000-8100" stay whole: wrap at spaces only.
        return textwrap.wrap(
            " ".join(text.split()), width, break_on_hyphens=False, break_long_words=False
        )

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=False,
        )

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, "Usage: " if prefix is None else prefix)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(None, message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; its --help keeps the original flags, short forms and defaults."""
    parser = _Parser(
        prog=PROG,
        usage="%(prog)s [OPTIONS]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_ContractHelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    options = parser.add_argument_group("Options")
    add = options.add_argument
    # The original tool's flags: names, short forms, defaults and help text are a contract.
    add(
        "-i",
        "--iface",
        action="append",
        metavar="IFACE",
        help="Network Interface to attach eBPF program to [default: eth0]",
    )
    add(
        "-p",
        "--ports",
        metavar="PORTS",
        help="Comma-separated ports to collect data for. 0 means all ports [default: 0]",
    )
    add(
        "-w",
        "--window",
        metavar="WINDOW",
        help="Sampling interval in seconds. value must be divisable by 10 [default: 60]",
    )
    add(
        "-s",
        "--server-port",
        metavar="SERVER_PORT",
        help="Port to serve prometheus metrics on (i.e. HTTP Server Port) [default: 3031]",
    )
    add(
        "--serve-ip-list",
        action="store_true",
        default=None,
        help="Whether to serve a list of connected IP addresses on :[server_port]/list",
    )
    # Added flags.
    add(
        "-c",
        "--config",
        metavar="PATH",
        help="Configuration file (TOML); flags given here override its keys. A missing default "
        f"file is not an error, a missing named one is [default: {DEFAULT_CONFIG_PATH}]",
    )
    add(
        "--listen-address",
        metavar="ADDRESS",
        help="IPv4 or IPv6 address to serve HTTP on [default: 0.0.0.0]",
    )
    add(
        "--xdp-mode",
        metavar="MODE",
        help="How to attach: skb (generic XDP, works with every driver) or native (in the "
        "driver, faster, needs driver support) [default: skb]",
    )
    add(
        "--max-entries",
        metavar="N",
        help="Capacity of the kernel map of (interface, source, protocol, port) entries; when "
        "full, the least recently seen are evicted [default: 262144]",
    )
    add(
        "--pin-path",
        metavar="DIR",
        help="Keep the map of sources pinned in this bpffs directory, so that a restarted daemon "
        "carries on with what was seen before; empty to disable [default: off]",
    )
    add(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="Web configuration file (YAML, the Prometheus exporter-toolkit format) that turns on "
        "TLS and/or basic authentication; re-read on SIGHUP [default: none]",
    )
    # Not in --help: shorter refresh cycles are for tests (the key refresh_interval is documented).
    add("--refresh-interval", metavar="SECONDS", help=argparse.SUPPRESS)
    add(
        "--check-config",
        action="store_true",
        help="Check the configuration file and flags (interfaces included), print a summary and "
        "exit: 0 when valid, 2 when not",
    )
    add("-V", "--version", action="version", version=f"{PROG} {__version__}", help="Print version")
    add("-h", "--help", action="help", help="Print help")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; usage errors raise ConfigError (--help, --version exit 0)."""
    return build_parser().parse_args(list(argv))


def _integer(text: str, where: str) -> int:
    if not _INTEGER_TEXT.fullmatch(text.strip()):
        raise ConfigError(where, f"expected an integer, got {text!r}")
    return int(text)


def _interfaces(values: list[str], where: str) -> tuple[str, ...]:
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            if not name.strip():
                raise ConfigError(where, f"empty interface name in {value!r}")
            names.append(name.strip())
    return tuple(names)


# Flag destination -> (Settings field, how its text becomes a value).
_FLAG_FIELDS: dict[str, tuple[str, Any]] = {
    "iface": ("interfaces", _interfaces),
    "ports": ("ports", parse_ports),
    "window": ("window", _integer),
    "server_port": ("server_port", _integer),
    "serve_ip_list": ("serve_ip_list", lambda value, where: value),
    "listen_address": ("listen_address", lambda value, where: value),
    "xdp_mode": ("xdp_mode", lambda value, where: value),
    "max_entries": ("max_entries", _integer),
    "refresh_interval": ("refresh_interval", _integer),
    "pin_path": ("pin_path", lambda value, where: value),
    "web_config_file": ("web_config_file", lambda value, where: _absolute_path(value)),
}


def _absolute_path(text: str) -> str:
    """A path given on the command line, made absolute (a reload may run in another cwd)."""
    return str(Path(text).absolute()) if text else ""


def _flag_name(parser: argparse.ArgumentParser, dest: str) -> str:
    for action in parser._actions:
        if action.dest == dest:
            return "argument " + "/".join(action.option_strings)
    raise KeyError(dest)


def settings_from_namespace(
    namespace: argparse.Namespace, default_config: Path = DEFAULT_CONFIG_PATH
) -> Settings:
    """Settings from the configuration file with the given flags layered over it."""
    explicit = namespace.config is not None
    path = Path(namespace.config if explicit else default_config).absolute()
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    config_path: Path | None = None
    if explicit or path.exists():
        values = load_file(path)
        origins = {key: file_key(path, key) for key in values}
        config_path = path

    parser = build_parser()
    for dest, (field_name, convert) in _FLAG_FIELDS.items():
        given = getattr(namespace, dest)
        if given is None:
            continue
        where = _flag_name(parser, dest)
        values[field_name] = convert(given, where)
        origins[field_name] = where
    settings = Settings(**values, config_path=config_path, origins=origins)
    if settings.web_config_file:
        # Read here, so that --check-config, start-up and a reload all reject a bad one (the
        # daemon reads it again to use it).
        load_web_config(Path(settings.web_config_file), settings.origin("web_config_file"))
    return settings


def settings_from_args(argv: Sequence[str], default_config: Path = DEFAULT_CONFIG_PATH) -> Settings:
    """Settings from a command line (without the program name). Raises ConfigError.

    Does not check that interfaces exist: see config.validate_interfaces.
    """
    return settings_from_namespace(parse_args(argv), default_config)


def reload_settings(
    argv: Sequence[str] | None = None, default_config: Path = DEFAULT_CONFIG_PATH
) -> Settings:
    """For SIGHUP: read the configuration file again, apply the same flags over it, and check
    that the interfaces exist. `argv` defaults to this process's command line. Raises ConfigError.
    """
    settings = settings_from_args(sys.argv[1:] if argv is None else argv, default_config)
    validate_interfaces(settings)
    return settings
