"""Reliability tests reuse the end-to-end fixtures: the client namespace with veth pairs (`lab`)
and the real daemon (`start_daemon`), both cleaned up whatever happens."""

from e2e.conftest import lab, start_daemon

__all__ = ["lab", "start_daemon"]
