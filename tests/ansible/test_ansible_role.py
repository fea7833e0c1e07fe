"""The Ansible playbook and role pass `ansible-playbook --syntax-check` and `ansible-lint`
(production profile), and the role's template renders the TOML the daemon reads. No root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import require
from xdp_ip_counter.config import Settings, load_file
from xdp_ip_counter.web.config import load_web_config

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
ROLE_DIR = ANSIBLE_DIR / "roles" / "xdp_ip_counter"


def ansible_environment(tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
    }


def run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    require(shutil.which(command[0]), f"{command[0]} is not installed (bootstrap installs it)")
    return subprocess.run(
        command,
        cwd=ANSIBLE_DIR,
        env=ansible_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_site_playbook_syntax_check(tmp_path: Path) -> None:
    result = run(
        ["ansible-playbook", "--syntax-check", "-i", "inventory/example", "site.yml"], tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    result = run(["ansible-lint", "--nocolor", "--profile", "production", "--offline"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # it linted the role and the playbook, not an empty selection
    assert "Passed" in result.stdout + result.stderr, result.stdout + result.stderr


def test_ansible_lint_reports_a_violation(tmp_path: Path) -> None:
    """The lint test can fail: a task without a name and with a bare module name is reported."""
    project = tmp_path / "project"
    shutil.copytree(ANSIBLE_DIR, project)
    tasks = project / "roles" / "xdp_ip_counter" / "tasks" / "main.yml"
    tasks.write_text(tasks.read_text() + "\n- command: /bin/true\n")
    require(shutil.which("ansible-lint"), "ansible-lint is not installed (bootstrap installs it)")
    result = subprocess.run(
        ["ansible-lint", "--nocolor", "--profile", "production", "--offline"],
        cwd=project,
        env=ansible_environment(tmp_path) | {"ANSIBLE_CONFIG": str(project / "ansible.cfg")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "fqcn" in result.stdout + result.stderr, result.stdout + result.stderr


RENDER_PLAYBOOK = """
- name: Render the role's configuration template
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Load the role's defaults
      ansible.builtin.include_vars:
        file: {defaults}
    - name: Render
      ansible.builtin.template:
        src: {template}
        dest: {dest}
        mode: "0644"
"""


@pytest.mark.parametrize(
    ("role_vars", "expected"),
    [
        pytest.param(
            {},
            {
                "interfaces": ["eth0"],
                "ports": [],
                "window": 60,
                "fleet_ports": [],
                "listen_address": "0.0.0.0",
                "server_port": 3031,
                "serve_ip_list": False,
                "xdp_mode": "skb",
                "max_entries": 262144,
                "new_source_budget": 0,
                "protocols": ["tcp", "udp"],
                "icmp_types": ["icmp:8", "icmpv6:128"],
                "exclude_sources": [],
                "include_sources": [],
                "prefix_lengths": ["v4:24", "v6:48"],
                "scan_ports": 10,
                "pin_path": "/sys/fs/bpf/xdp-ip-counter",
                "web_config_file": "",
            },
            id="defaults",
        ),
        pytest.param(
            {
                "xdp_ip_counter_interfaces": ["eth1", "bond0"],
                "xdp_ip_counter_ports": [22, "8000-8100"],
                "xdp_ip_counter_window": 300,
                "xdp_ip_counter_fleet_ports": [22],
                "xdp_ip_counter_listen_address": "::",
                "xdp_ip_counter_serve_ip_list": True,
                "xdp_ip_counter_xdp_mode": "native",
                "xdp_ip_counter_new_source_budget": 20000,
                "xdp_ip_counter_protocols": ["tcp", "icmp", "icmpv6"],
                "xdp_ip_counter_icmp_types": [8, "icmp:3"],
                "xdp_ip_counter_exclude_sources": ["192.0.2.7", "2001:db8::/32"],
                "xdp_ip_counter_include_sources": ["10.0.0.0/8"],
                "xdp_ip_counter_prefix_lengths": ["v4:16"],
                "xdp_ip_counter_scan_ports": 0,
                "xdp_ip_counter_pin_path": "",
                "xdp_ip_counter_extra_settings": {"refresh_interval": 5},
            },
            {
                "interfaces": ["eth1", "bond0"],
                "ports": [22, "8000-8100"],
                "window": 300,
                "fleet_ports": [22],
                "listen_address": "::",
                "server_port": 3031,
                "serve_ip_list": True,
                "xdp_mode": "native",
                "max_entries": 262144,
                "new_source_budget": 20000,
                "protocols": ["tcp", "icmp", "icmpv6"],
                "icmp_types": [8, "icmp:3"],
                "exclude_sources": ["192.0.2.7", "2001:db8::/32"],
                "include_sources": ["10.0.0.0/8"],
                "prefix_lengths": ["v4:16"],
                "scan_ports": 0,
                "pin_path": "",
                "web_config_file": "",
                "refresh_interval": 5,
            },
            id="every-variable",
        ),
    ],
)
def test_config_template_renders_the_toml_the_daemon_reads(
    tmp_path: Path, role_vars: dict[str, object], expected: dict[str, object]
) -> None:
    rendered = tmp_path / "config.toml"
    playbook = tmp_path / "render.yml"
    playbook.write_text(
        RENDER_PLAYBOOK.format(
            defaults=ROLE_DIR / "defaults" / "main.yml",
            template=ROLE_DIR / "templates" / "config.toml.j2",
            dest=rendered,
        )
    )
    extra_vars = tmp_path / "vars.json"
    extra_vars.write_text(json.dumps(role_vars))
    result = run(
        ["ansible-playbook", "-i", "localhost,", "-e", f"@{extra_vars}", str(playbook)], tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert tomllib.loads(rendered.read_text()) == expected
    # and the daemon's own loader accepts it (interfaces are checked on the target, not here)
    Settings(**load_file(rendered))


def test_web_config_template_renders_a_file_the_daemon_accepts(tmp_path: Path) -> None:
    """The role's web configuration (basic auth here) is written as exporter-toolkit YAML that
    the daemon's loader accepts, and config.toml names it."""
    import bcrypt  # noqa: PLC0415

    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    web_path = tmp_path / "web.yml"
    role_vars = {
        "xdp_ip_counter_web_config": {"basic_auth_users": {"prometheus": hashed}},
        "xdp_ip_counter_web_config_path": str(web_path),
    }
    extra_vars = tmp_path / "vars.json"
    extra_vars.write_text(json.dumps(role_vars))
    for template, dest in (("web.yml.j2", web_path), ("config.toml.j2", tmp_path / "c.toml")):
        playbook = tmp_path / f"render-{template}.yml"
        playbook.write_text(
            RENDER_PLAYBOOK.format(
                defaults=ROLE_DIR / "defaults" / "main.yml",
                template=ROLE_DIR / "templates" / template,
                dest=dest,
            )
        )
        result = run(
            ["ansible-playbook", "-i", "localhost,", "-e", f"@{extra_vars}", str(playbook)],
            tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert tomllib.loads((tmp_path / "c.toml").read_text())["web_config_file"] == str(web_path)
    web = load_web_config(web_path)
    assert dict(web.users) == {b"prometheus": hashed.encode()}
    assert web.tls is None
