"""The fresh-root check: the README's commands work on a Debian 12 that has nothing installed.

A green run on a developer's machine proves little: packages installed there by hand hide a
missing install step. Here a clone of the committed HEAD goes into a minbase Debian 12 root
(debootstrap with git and ca-certificates only, cached by debian_root.py) and, chrooted in a
private mount namespace with the host's /dev and /sys bound:

- the README's run command installs what the daemon needs (its first step, with the network),
  then brings up a daemon on `lo` that answers /metrics. The daemon runs in a network namespace
  of this test's own, so the XDP program is attached to that namespace's `lo`, never the host's;
- `./dev deb` installs the build dependencies and builds the .deb.

The root is a fresh copy every run; only debootstrap's result and apt's downloads are cached.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import serving_daemon
from tests.support.netns import namespace

from .deb import REPO
from .debian_root import DebianRoot, debian_root

pytestmark = pytest.mark.root

CLONE = "/root/xdp-ip-counter"  # where the clone is, inside the root
METRICS_PORT = 3031
START_DEADLINE_S = 180  # bcc's compile: seconds here, longer on a slow machine


def readme_setup_commands() -> dict[str, str]:
    """The README's set-up commands (its first code block), by their trailing comment."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"^## Set-up.*?^```sh\n(.*?)^```", text, re.M | re.S)
    assert block, "README.md has no set-up block (## Set-up ... ```sh)"
    commands = {}
    for line in block.group(1).splitlines():
        command, _, comment = line.partition("#")
        if command.strip():
            commands[comment.strip()] = command.strip()
    return commands


def run_command_on_lo() -> list[str]:
    """The README's run command, with the interface it names replaced by lo."""
    commands = readme_setup_commands()
    [run] = [command for command in commands.values() if command.startswith("./dev run")]
    words = shlex.split(run)
    for flag in ("--iface", "-i"):
        if flag in words:
            words[words.index(flag) + 1] = "lo"
            return words
    raise AssertionError(f"the README's run command names no interface: {run}")


@pytest.fixture(scope="module")
def fresh_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianRoot]:
    with debian_root(tmp_path_factory.mktemp("fresh-root")) as root:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"fresh root: a clone of {head}")
        subprocess.run(
            ["git", "clone", "--quiet", "--no-hardlinks", str(REPO), f"{root.path}{CLONE}"],
            check=True,
        )
        yield root


def in_clone(*command: str) -> tuple[str, ...]:
    return ("sh", "-c", f'cd {CLONE} && exec "$@"', "sh", *command)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = list(readme_setup_commands().values())
    assert len(commands) == 2, commands
    assert commands[0].startswith("./dev run") and commands[1] == "./dev test", commands


@pytest.fixture
def lo_namespace() -> Iterator[str]:
    """A network namespace of this test's with lo up; removed whatever happens."""
    with namespace(f"xic-fresh-{os.getpid()}") as created:
        yield created.name


def test_readme_run_command_serves_metrics_on_lo(
    fresh_root: DebianRoot, tmp_path: Path, lo_namespace: str
) -> None:
    command = run_command_on_lo()
    # First with the network: the command's bootstrap installs what is missing, then the
    # configuration check stops it before it attaches anything.
    checked = fresh_root.run(*in_clone(*command, "--check-config"), host_dev_sys=True)
    assert "configuration OK" in checked.stdout, checked.stdout + checked.stderr

    # Then for real, in a network namespace of this test: the bootstrap finds nothing to do.
    with serving_daemon(
        fresh_root.command(*in_clone(*command), host_dev_sys=True),
        netns=lo_namespace,
        port=METRICS_PORT,
        log_path=tmp_path / "daemon.log",
        start_deadline_s=START_DEADLINE_S,
    ) as daemon:
        assert 'active_users{ip="v4",port="22",proto="tcp"}' in daemon.metrics, daemon.metrics
        assert "xdp_ip_counter_frames_total" in daemon.metrics, daemon.metrics
        assert daemon.stop() == 0, daemon.log()


def test_dev_deb_builds_the_package(fresh_root: DebianRoot) -> None:
    built = fresh_root.run(*in_clone("./dev", "deb", "/tmp/deb"))
    deb = Path(built.stdout.strip().splitlines()[-1])
    assert deb.parent == Path("/tmp/deb") and deb.name.endswith("_all.deb"), built.stdout
    assert (fresh_root.path / deb.relative_to("/")).is_file(), built.stdout + built.stderr
