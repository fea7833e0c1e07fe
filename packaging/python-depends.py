#!/usr/bin/python3
"""Print, one per line, the Debian dependencies of pyproject.toml's Python requirements.

The requirements ([project] dependencies and every optional extra) are declared once, in
pyproject.toml; dh-python turns them into the package's Depends and Recommends at build time.
This script asks dh-python's own mapping (dhpython.pydist, the code behind dh_python3) for the
same translation, so that packaging/bootstrap.sh installs on a development machine exactly
what the package would depend on. Needs Debian's python3 and dh-python.

    packaging/python-depends.py [PYPROJECT]     (default: the checkout's pyproject.toml)

Exits 1 naming a requirement that dh-python cannot map to a Debian package.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

DH_PYTHON = "/usr/share/dh-python"


def requirements(pyproject: Path) -> list[str]:
    """Every requirement of the project: its dependencies, then each optional extra's."""
    project = tomllib.loads(pyproject.read_text())["project"]
    found = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        found.extend(extra)
    return found


def main(argv: list[str]) -> int:
    pyproject = Path(argv[1]) if len(argv) > 1 else Path(__file__).parents[1] / "pyproject.toml"
    sys.path.insert(0, DH_PYTHON)
    try:
        from dhpython.pydist import guess_dependency  # noqa: PLC0415 (found at run time)
    except ImportError:
        print(f"{argv[0]}: dh-python is not installed ({DH_PYTHON})", file=sys.stderr)
        return 1
    for requirement in requirements(pyproject):
        dependency = guess_dependency("cpython3", requirement)
        if not dependency and ";" in requirement:
            continue  # an environment marker that no Debian Python meets
        if not dependency:
            print(
                f"{argv[0]}: {pyproject}: dh-python knows no Debian package for {requirement!r}",
                file=sys.stderr,
            )
            return 1
        print(dependency)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
