"""Kernel tests (root): the XDP program run with BPF_PROG_TEST_RUN, and attached to veths."""

import pytest

# Detailed assertion messages from the helpers too, not only from the test modules.
pytest.register_assert_rewrite(f"{__name__}.program", f"{__name__}.netns")
