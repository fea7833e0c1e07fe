"""The .deb under test: where the checkout is, and a view of a built package."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_DEB = REPO / "packaging" / "build-deb.sh"


@dataclass(frozen=True)
class BuiltDeb:
    """A .deb that packaging/build-deb.sh made, with the output it printed."""

    path: Path
    build_output: str

    def field(self, name: str) -> str:
        """One field of the package's control file (Depends, Version, ...)."""
        return subprocess.run(
            ["dpkg-deb", "--field", str(self.path), name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def control_file(self, name: str) -> str:
        """A file of the control archive (postinst, conffiles, ...), "" if there is none."""
        listing = subprocess.run(
            ["dpkg-deb", "--ctrl-tarfile", str(self.path)], check=True, capture_output=True
        ).stdout
        result = subprocess.run(
            ["tar", "-xO", f"./{name}"], input=listing, capture_output=True, check=False
        )
        return result.stdout.decode() if result.returncode == 0 else ""

    def data_file(self, path: str) -> bytes:
        """The bytes of one installed file, e.g. "etc/xdp-ip-counter/config.toml"."""
        data = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(self.path)], check=True, capture_output=True
        ).stdout
        return subprocess.run(
            ["tar", "-xO", f"./{path}"], input=data, capture_output=True, check=True
        ).stdout

    def paths(self) -> set[str]:
        """Every path in the data archive, as installed ("/usr/bin/xdp-ip-counter")."""
        listing = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(self.path)], check=True, capture_output=True
        ).stdout
        names = subprocess.run(
            ["tar", "-t"], input=listing, capture_output=True, check=True
        ).stdout.decode()
        return {"/" + name.removeprefix("./").rstrip("/") for name in names.split()} - {"/"}
