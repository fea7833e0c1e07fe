"""pytest plugin for `./dev test`: once a stage fails, skip the stages after it.

A stage is a top-level folder of tests/ (unit, kernel, e2e, package, ansible, bench, fleet),
run in the order ./dev gives them. The rest of the failing stage still runs, so its report is
complete; later stages (minutes of VMs, say) are skipped with the name of the stage that failed,
and the run fails all the same. Loaded with `-p tests.package.stage_gate`.
"""

from __future__ import annotations

import pytest


def stage_of(nodeid: str) -> str:
    """The stage of a test: its folder under tests/ ("unit" for tests/unit/test_x.py::y)."""
    parts = nodeid.split("::", 1)[0].split("/")
    if len(parts) > 2 and parts[0] == "tests":
        return parts[1]
    return parts[0]


class StageGate:
    """Remembers the first stage with a failure and skips tests of any other stage after it."""

    def __init__(self) -> None:
        self.failed_stage: str | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if self.failed_stage is not None and stage_of(item.nodeid) != self.failed_stage:
            pytest.skip(f"stage {self.failed_stage!r} failed before this one")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and self.failed_stage is None:
            self.failed_stage = stage_of(report.nodeid)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(StageGate(), "xdp-ip-counter-stage-gate")
