"""Reliability tests reuse the end-to-end fixtures: the client namespace with veth pairs (`lab`)
and the real daemon (`start_daemon`), both cleaned up whatever happens; `spawned` stops the
traffic processes a test starts in the lab's namespace."""

from collections.abc import Iterator

import pytest
from e2e.conftest import lab, start_daemon

from .flood import Flood, SteadyClient

__all__ = ["lab", "spawned", "start_daemon"]


@pytest.fixture
def spawned() -> Iterator[list[Flood | SteadyClient]]:
    """Processes the test starts inside the lab's namespace (Flood, SteadyClient): stopped
    before the lab goes when the test asks for this fixture after `lab` and `start_daemon`
    (fixtures are torn down in the reverse order of their setup)."""
    processes: list[Flood | SteadyClient] = []
    yield processes
    for process in reversed(processes):
        process.kill() if isinstance(process, Flood) else process.stop()
