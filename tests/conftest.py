"""Shared test gates: root and kernel features/tools.

Outside CI a missing requirement skips the test with its reason (printed in the summary); with
CI=true it fails, so that a CI run cannot pass by skipping. Use `@pytest.mark.root` or the
`require_root` fixture for root, and `require(condition, reason)` (a function here, also a
fixture of the same name) for anything else.
"""

from __future__ import annotations

import os

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
