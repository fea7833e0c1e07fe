"""Fixtures for the package tests: the .deb, built once per run by packaging/build-deb.sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .deb import BUILD_DEB, BuiltDeb


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> BuiltDeb:
    """Build the .deb into a temporary directory, once; fail with the build's output."""
    output_dir = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        [str(BUILD_DEB), str(output_dir)], capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"packaging/build-deb.sh failed:\n{output}"
    deb_path = Path(result.stdout.strip().splitlines()[-1])
    assert deb_path.is_file(), f"build-deb.sh printed {deb_path}, which is not a file"
    return BuiltDeb(path=deb_path, build_output=output)
