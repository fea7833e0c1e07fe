"""Shared test gates: root and kernel features/tools.

Outside CI a missing requirement skips the test with its reason (printed in the summary); with
CI=true it fails, so that a CI run cannot pass by skipping. Use `@pytest.mark.root` or the
`require_root` fixture for root, and `require(condition, reason)` (a function here, also a
fixture of the same name) for anything else.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT_REASON = "needs root (BPF, XDP, network namespaces): run the tests as root"


def in_ci() -> bool:
    """Whether this is a CI run (CI=true), where missing requirements are failures."""
    return os.environ.get("CI", "").lower() == "true"


def require(condition: object, reason: str) -> None:
    """Skip the running test with `reason` unless `condition` holds; fail instead under CI."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this environment must provide it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(name="require")
def require_fixture() -> object:
    """The `require(condition, reason)` function, for tests that prefer a fixture to an import."""
    return require


def env_int(name: str, default: int, minimum: int, why: str = "") -> int:
    """An integer from the environment (long-run sizes, seeds), or default when unset; a bad
    value stops the run naming the variable."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise pytest.UsageError(f"{name}={text!r} is not an integer") from None
    if value < minimum:
        raise pytest.UsageError(f"{name}={value}: at least {minimum}{why}")
    return value


def assert_golden(path: Path, actual: bytes) -> None:
    """actual must equal the golden file byte for byte; UPDATE_GOLDEN=1 rewrites it."""
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(actual)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 to create it"
    assert actual == path.read_bytes(), f"differs from {path} (UPDATE_GOLDEN=1 to accept)"


@pytest.fixture
def require_root() -> None:
    """Skip (or under CI fail) unless running as root."""
    require(os.geteuid() == 0, ROOT_REASON)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Show why tests were skipped ("SKIPPED [3] ...: needs root ...") in the short summary.
    chars = config.option.reportchars or ""
    if not any(c in chars for c in "sSaAN"):
        config.option.reportchars = chars + "s"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None:
        require(os.geteuid() == 0, ROOT_REASON)
