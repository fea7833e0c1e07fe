"""The command line: the original tool's flags (a contract), layered over the TOML file.

Only flags actually given override the file: every flag defaults to None, and the defaults shown
in --help are Settings' own. Usage errors raise ConfigError too, so that __main__ turns every bad
input into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from xdp_ip_counter import __version__
from xdp_ip_counter.config import (
    DEFAULT_CONFIG_PATH,
    SETTINGS,
    ConfigError,
    Setting,
    Settings,
    file_key,
    load_file,
    validate_interfaces,
)
from xdp_ip_counter.web.config import load_web_config

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


def _add_setting(options: argparse._ArgumentGroup, setting: Setting) -> None:
    """The flag of one setting; it defaults to None, so that only given flags override."""
    if setting.metavar is None:
        options.add_argument(
            *setting.flags, dest=setting.key, action="store_true", default=None, help=setting.help
        )
        return
    options.add_argument(
        *setting.flags,
        dest=setting.key,
        action="append" if setting.repeatable else "store",
        metavar=setting.metavar,
        help=argparse.SUPPRESS
        if setting.help is None
        else f"{setting.help} [default: {setting.default_text}]",
    )


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
    # The original tool's flags first: names, short forms, defaults and help text are a contract.
    for setting in SETTINGS:
        if setting.original:
            _add_setting(options, setting)
    options.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="Configuration file (TOML); flags given here override its keys. A missing default "
        f"file is not an error, a missing named one is [default: {DEFAULT_CONFIG_PATH}]",
    )
    for setting in SETTINGS:
        if not setting.original:
            _add_setting(options, setting)
    options.add_argument(
        "--check-config",
        action="store_true",
        help="Check the configuration file and flags (interfaces included), print a summary and "
        "exit: 0 when valid, 2 when not",
    )
    options.add_argument(
        "-V", "--version", action="version", version=f"{PROG} {__version__}", help="Print version"
    )
    options.add_argument("-h", "--help", action="help", help="Print help")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; usage errors raise ConfigError (--help, --version exit 0)."""
    return build_parser().parse_args(list(argv))


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

    for setting in SETTINGS:
        given = getattr(namespace, setting.key)
        if given is None:
            continue
        where = f"argument {setting.flag}"
        values[setting.key] = setting.from_flag(given, where)
        origins[setting.key] = where
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
