"""The README's two commands: `./dev run` brings up a daemon that answers on its metrics port,
and `./dev test` passes its arguments to pytest and fails when pytest ran nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import serving_daemon
from tests.support.netns import namespace

from .deb import REPO

DEV = REPO / "dev"
HOST_IF, PEER_IF = "xdev0", "xdev1"


def run_dev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEV), *args], capture_output=True, text=True, check=False, timeout=600
    )


def test_dev_without_a_command_prints_usage_and_exits_2() -> None:
    result = run_dev()
    assert result.returncode == 2
    assert "./dev run" in result.stderr and "./dev test" in result.stderr


def test_dev_test_passes_arguments_to_pytest() -> None:
    result = run_dev("test", f"{Path(__file__).with_name('test_deb.py')}", "-k", "lintian_override")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "==== lint: ruff" in result.stdout
    assert "1 passed" in result.stdout, result.stdout


def test_dev_test_fails_when_pytest_collects_nothing() -> None:
    result = run_dev("test", str(Path(__file__)), "-k", "no_test_has_this_name")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "collected no tests" in result.stderr


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with a veth pair, both ends inside; removed whatever happens."""
    with namespace(f"xic-dev-{os.getpid()}", [(HOST_IF, PEER_IF)]) as created:
        yield created.name


@pytest.mark.root
def test_dev_run_serves_metrics(netns: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    command = [str(DEV), "run", "-c", str(config), "-i", HOST_IF, "-p", "22,80,443", "-s", "3031"]
    with serving_daemon(
        command, netns=netns, port=3031, log_path=tmp_path / "dev-run.log"
    ) as daemon:
        assert "xdp_ip_counter_" in daemon.metrics, daemon.metrics[:2000]
        assert daemon.stop() == 0, daemon.log()
