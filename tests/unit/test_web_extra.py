"""The `web` extra (PyYAML, bcrypt) is optional: the daemon imports and runs without it, and a web
configuration file that needs it is refused at start-up and on reload, naming the package.

Each case runs the daemon's entry point in Debian's Python with the modules made unimportable
(sys.modules[name] = None), so an import anywhere in the package, at any time, is caught.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.python import run_python
from xdp_ip_counter.cli import reload_settings
from xdp_ip_counter.config import ConfigError

# Valid in form (cost 4, 53 characters of salt and hash); never checked, bcrypt is missing.
A_BCRYPT_HASH = "$2y$04$" + "a" * 53

# argv[1]: modules to block, comma-separated; the rest: the daemon's arguments.
RUN_WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
import xdp_ip_counter.daemon  # every module the daemon loads, loaded
from xdp_ip_counter.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


def check_config_without(
    modules: str, config: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    return run_python("-c", RUN_WITHOUT, modules, "--check-config", "-c", str(config), *flags)


def write_config(tmp_path: Path, web_yml: str | None) -> Path:
    config = tmp_path / "config.toml"
    lines = ['interfaces = ["lo"]', "ports = [22]"]
    if web_yml is not None:
        (tmp_path / "web.yml").write_text(web_yml)
        lines.append(f'web_config_file = "{tmp_path / "web.yml"}"')
    config.write_text("\n".join(lines) + "\n")
    return config


def test_without_yaml_and_bcrypt_a_configuration_without_web_file_is_ok(tmp_path: Path) -> None:
    result = check_config_without("yaml,bcrypt", write_config(tmp_path, None))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configuration OK: interfaces lo; ports 22; "), result.stdout


def test_without_yaml_a_web_file_is_refused_naming_the_package(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http_server_config:\n  http2: false\n")
    result = check_config_without("yaml", config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        f"xdp-ip-counter: error: {config}: key 'web_config_file': reading {tmp_path / 'web.yml'} "
        "needs PyYAML: apt-get install python3-yaml (or pip install 'xdp-ip-counter[web]')\n"
    )


def test_without_yaml_a_web_file_given_by_flag_is_refused_naming_the_flag(tmp_path: Path) -> None:
    (tmp_path / "web.yml").write_text("")
    config = write_config(tmp_path, None)
    result = check_config_without("yaml", config, "--web.config.file", str(tmp_path / "web.yml"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        f"xdp-ip-counter: error: argument --web.config.file: reading {tmp_path / 'web.yml'} "
        "needs PyYAML: apt-get install python3-yaml (or pip install 'xdp-ip-counter[web]')\n"
    )


def test_without_bcrypt_a_web_file_without_users_is_ok(tmp_path: Path) -> None:
    config = write_config(tmp_path, "basic_auth_users:\nhttp_server_config:\n  http2: false\n")
    result = check_config_without("bcrypt", config)
    assert result.returncode == 0, result.stderr


def test_without_bcrypt_a_web_file_with_users_is_refused_naming_the_package(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{A_BCRYPT_HASH}'\n")
    result = check_config_without("bcrypt", config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        f"xdp-ip-counter: error: {tmp_path / 'web.yml'}: key 'basic_auth_users': checking "
        "passwords needs bcrypt: apt-get install python3-bcrypt (or pip install "
        "'xdp-ip-counter[web]')\n"
    )


def test_a_reload_without_yaml_is_refused_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, "")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ConfigError, match=r"needs PyYAML: apt-get install python3-yaml"):
        reload_settings(["-c", str(config)])
