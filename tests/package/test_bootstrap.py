"""packaging/bootstrap.sh against what the project really uses: the guard against drift.

What a machine needs is declared once: the package's dependencies in packaging/debian/control
and pyproject.toml, the test tools in the bootstrap's own list. These tests fail when the
bootstrap would leave something out: a dependency field of the control file, a Depends or
Recommends of the built .deb, a command that a test or benchmark runs, or a module one imports.
A package counts as installed by the bootstrap when the bootstrap names it, when a package it
names depends on it directly, or when every Debian system has it (Essential, Priority required).
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from .deb import REPO, BuiltDeb

BOOTSTRAP = REPO / "packaging" / "bootstrap.sh"
CONTROL = REPO / "packaging" / "debian" / "control"
# Where tests and benchmarks live, and the project's own top-level modules.
SCANNED = ("tests", "bench", "packaging")
LOCAL_MODULES = {"tests", "bench", "xdp_ip_counter", "conftest"}
# Where modules are looked for besides sys.path: packaging/python-depends.py imports dh-python's.
EXTRA_MODULE_PATH = ["/usr/share/dh-python"]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
COMMAND_NAME = re.compile(r"[a-z][a-z0-9._+-]*")


def dependency_entries(field: str) -> list[str]:
    """A dependency field split into its entries, substitution variables left out."""
    entries = (re.sub(r"\$\{[^}]*\}", "", entry).strip() for entry in field.split(","))
    return [" ".join(entry.split()) for entry in entries if entry]


def entry_names(entry: str) -> set[str]:
    """The package names of one entry's alternatives ("a (>= 1) | b:any" -> {a, b})."""
    return {alternative.split()[0].split(":")[0] for alternative in entry.split("|")}


def control_fields() -> dict[str, str]:
    """The dependency fields of packaging/debian/control: the source stanza's Build-Depends*,
    the binary stanza's Depends, continuation lines joined, comment lines left out."""
    fields: dict[str, str] = {}
    key = None
    for line in CONTROL.read_text().splitlines():
        if line.startswith("#"):
            continue
        if line[:1] in (" ", "\t") and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields.setdefault(key, "")
            fields[key] += value.strip()
        else:
            key = None
    return {name: value for name, value in fields.items() if "Depends" in name}


@functools.cache
def bootstrap_entries(profile: str = "test") -> tuple[str, ...]:
    result = subprocess.run(
        [str(BOOTSTRAP), "--print", profile], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return tuple(line.strip() for line in result.stdout.splitlines() if line.strip())


def direct_depends(packages: Iterable[str]) -> set[str]:
    """The packages that the installed `packages` depend on directly (Depends, Pre-Depends)."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Depends}, ${Pre-Depends}\n", *sorted(packages)],
        capture_output=True,
        text=True,
        check=False,
    )
    names: set[str] = set()
    for line in result.stdout.splitlines():
        for entry in dependency_entries(line):
            names |= entry_names(entry)
    return names


@functools.cache
def bootstrapped() -> frozenset[str]:
    """Every package the bootstrap names, with the packages those depend on directly."""
    named: set[str] = set()
    for entry in bootstrap_entries():
        named |= entry_names(entry)
    return frozenset(named | direct_depends(named))


def part_of_every_system(package: str) -> bool:
    fields = subprocess.run(
        ["dpkg-query", "-W", "-f=${Essential} ${Priority}", package],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return "yes" in fields or "required" in fields


def owner(path: str) -> str | None:
    """The package that ships path (merged /usr: /bin/x and /usr/bin/x are one file)."""
    candidates = {path, str(Path(path).resolve())}
    for candidate in list(candidates):
        if candidate.startswith("/usr/"):
            candidates.add(candidate.removeprefix("/usr"))
        else:
            candidates.add("/usr" + candidate)
    for candidate in sorted(candidates):
        result = subprocess.run(
            ["dpkg-query", "-S", candidate], capture_output=True, text=True, check=False
        )
        for line in result.stdout.splitlines():
            packages, _, found = line.rpartition(": ")
            if found == candidate and not line.startswith("diversion"):
                return packages.split(",")[0].split(":")[0].strip()
    return None


def python_files() -> list[Path]:
    return sorted(path for folder in SCANNED for path in (REPO / folder).rglob("*.py"))


def commands_in(source: str) -> set[str]:
    """The external commands a Python source names: a string that is a single word and a
    program on the system PATH, or the first word of an f-string that is one."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        word = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            word = node.value
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                word = first.value.split(" ")[0]
        if word and COMMAND_NAME.fullmatch(word) and shutil.which(word, path=SYSTEM_PATH):
            found.add(word)
    return found


def imports_in(source: str) -> set[str]:
    """The top-level modules a Python source imports by absolute name (importorskip too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "importorskip"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value).split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def third_party(modules: Iterable[str], local: set[str]) -> set[str]:
    return {m for m in modules if m not in sys.stdlib_module_names and m not in local}


def not_bootstrapped(paths: dict[str, str | None], installed: Iterable[str]) -> list[str]:
    """What of {name: path it resolves to} no package of `installed` (or of every system)
    ships, each with the reason."""
    installed = set(installed)
    problems = []
    for name, path in sorted(paths.items()):
        package = owner(path) if path else None
        if package is None:
            problems.append(f"{name} ({path}): no Debian package ships it")
        elif package not in installed and not part_of_every_system(package):
            problems.append(f"{name} ({path}): from {package}, which the bootstrap leaves out")
    return problems


def test_bootstrap_reads_every_dependency_of_the_control_file() -> None:
    fields = control_fields()
    assert {"Build-Depends", "Depends"} <= set(fields), fields
    printed = set(bootstrap_entries())
    for name, value in fields.items():
        for entry in dependency_entries(value):
            assert entry in printed, f"control's {name} has {entry!r}; the bootstrap misses it"


def test_bootstrap_profiles_grow_run_build_test() -> None:
    run, build, test = (set(bootstrap_entries(p)) for p in ("run", "build", "test"))
    assert run < build < test
    assert "build-essential" in build - run
    assert "python3-pytest" in test - build


@pytest.mark.root
def test_every_dependency_of_the_built_package_is_bootstrapped(built_deb: BuiltDeb) -> None:
    missing = []
    for field in ("Depends", "Recommends"):
        for entry in dependency_entries(built_deb.field(field)):
            if entry.startswith("linux-headers"):
                continue  # installed by the bootstrap only where the kernel has none
            if not entry_names(entry) & bootstrapped():
                missing.append(f"{field}: {entry}")
    assert not missing, f"the built .deb needs what the bootstrap does not install: {missing}"


def test_every_command_a_test_runs_is_bootstrapped() -> None:
    commands: set[str] = set()
    for path in python_files():
        commands |= commands_in(path.read_text())
    # The scan sees the commands the suite is known to run.
    assert {"ip", "trafgen", "promtool", "qemu-system-x86_64", "debootstrap", "curl"} <= commands
    resolved = {command: shutil.which(command, path=SYSTEM_PATH) for command in commands}
    assert not (problems := not_bootstrapped(resolved, bootstrapped())), "\n".join(problems)


def test_every_module_a_test_imports_is_bootstrapped() -> None:
    files = python_files()
    local = LOCAL_MODULES | {path.stem for path in files} | {path.parent.name for path in files}
    modules: set[str] = set()
    for path in [*python_files(), *sorted((REPO / "xdp_ip_counter").rglob("*.py"))]:
        modules |= third_party(imports_in(path.read_text()), local)
    assert {"bcc", "pytest", "numpy", "prometheus_client"} <= modules, modules
    origins = {}
    for module in modules:
        spec = importlib.machinery.PathFinder.find_spec(module, sys.path + EXTRA_MODULE_PATH)
        origins[module] = spec.origin if spec and spec.origin else None
        if spec and spec.submodule_search_locations and not spec.origin:
            origins[module] = next(iter(spec.submodule_search_locations))
    assert not (problems := not_bootstrapped(origins, bootstrapped())), "\n".join(problems)


def test_the_check_names_what_the_bootstrap_leaves_out() -> None:
    """The checks above can fail: without curl's package, curl is named."""
    curl = shutil.which("curl", path=SYSTEM_PATH)
    assert curl, "curl is not installed (the bootstrap installs it)"
    problems = not_bootstrapped({"curl": curl}, bootstrapped() - {"curl"})
    assert problems == [f"curl ({curl}): from curl, which the bootstrap leaves out"]
    assert not_bootstrapped({"nothing": "/nonexistent/nothing"}, bootstrapped()) == [
        "nothing (/nonexistent/nothing): no Debian package ships it"
    ]


def test_the_scans_find_commands_and_imports() -> None:
    source = (
        'import yaml\nfrom scapy import all\nsubprocess.run(["curl", "-s"])\nx = f"tar -x {y}"\n'
        'seccomp = pytest.importorskip("seccomp")\nfrom . import frames\nimport os.path\n'
    )
    assert commands_in(source) == {"curl", "tar"}
    assert third_party(imports_in(source), set()) == {"yaml", "scapy", "seccomp"}
