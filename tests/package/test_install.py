"""Install test: the .deb in a fresh Debian 12 root, its dependencies from Debian's archive.

The root is a minbase one (debian_root.py): nothing in it but what the package pulls in, so a
program that the unit runs and the package does not depend on is missing there. Checks that
the dependencies bring every program the unit runs, that the files land, the configuration is
a conffile and a local edit survives a reinstall, the unit is enabled and passes
`systemd-analyze verify` with the installed program, the program runs there, and that a purge
leaves the root exactly as it was before the install.
The tests of this module share one root and run in order; the purge comes after the checks.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import xdp_ip_counter

from .deb import REPO, BuiltDeb
from .debian_root import DebianRoot, debian_root

pytestmark = pytest.mark.root

UNIT = "xdp-ip-counter.service"
CONFIG = "etc/xdp-ip-counter/config.toml"


@dataclass
class Installation:
    root: DebianRoot
    deb_in_root: str
    paths_before: set[str]
    unit_programs: dict[str, bool]  # each program the unit runs: executable before systemd came


def unit_programs(unit_text: str) -> list[str]:
    """The programs that a unit's Exec*= lines run (their prefixes - @ : + ! stripped)."""
    programs = []
    for raw_line in unit_text.splitlines():
        key, _, value = raw_line.strip().partition("=")
        if key.startswith("Exec") and value:
            programs.append(value.split()[0].lstrip("-@:+!"))
    return programs


@pytest.fixture(scope="module")
def installation(
    built_deb: BuiltDeb, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installation]:
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is missing: packaging/bootstrap.sh installs it")
    with debian_root(tmp_path_factory.mktemp("install-root")) as root:
        shutil.copy2(built_deb.path, root.path / "tmp" / built_deb.path.name)
        deb_in_root = f"/tmp/{built_deb.path.name}"
        root.run("apt-get", "-q", "update")
        # Dependencies first (from the archive), so that the snapshot taken next holds them
        # and the purge can be compared with it exactly.
        depends = built_deb.field("Depends")
        root.run("apt-get", "-q", "satisfy", "-y", "--no-install-recommends", depends)
        # What the unit runs must be there now, before systemd comes in (as the verifier):
        # on a host, nothing but the package's own dependencies guarantees it.
        shipped = built_deb.paths()
        programs = {
            program: program in shipped
            or root.run("test", "-x", program, check=False).returncode == 0
            for program in unit_programs(built_deb.data_file(f"lib/systemd/system/{UNIT}").decode())
        }
        root.run("apt-get", "-q", "satisfy", "-y", "--no-install-recommends", "systemd")
        paths_before = root.tracked_paths()
        root.run("apt-get", "-q", "install", "-y", "--no-install-recommends", deb_in_root)
        yield Installation(root, deb_in_root, paths_before, programs)


def test_dependencies_bring_every_program_the_unit_runs(installation: Installation) -> None:
    programs = installation.unit_programs
    assert "/usr/bin/xdp-ip-counter" in programs and len(programs) >= 2, programs
    missing = sorted(program for program, found in programs.items() if not found)
    assert not missing, f"the unit runs {missing}, which no dependency of the package brings"


def test_unit_program_parsing_sees_every_exec_line() -> None:
    """The check above can fail: a program named only in ExecStartPre= is found too."""
    unit = (
        "[Service]\nExecStartPre=-/usr/bin/true\n"
        "ExecStart=/usr/bin/x --y\nExecReload=/bin/kill -HUP $MAINPID\n"
    )
    assert unit_programs(unit) == ["/usr/bin/true", "/usr/bin/x", "/bin/kill"]


def test_files_land_where_they_should(installation: Installation) -> None:
    root = installation.root.path
    for path in (
        "usr/bin/xdp-ip-counter",
        "usr/lib/python3/dist-packages/xdp_ip_counter/__main__.py",
        "usr/share/xdp-ip-counter/bpf/xdp_ip_counter.c",
        "usr/share/xdp-ip-counter/bpf/parsing.h",
        "usr/share/xdp-ip-counter/bpf/source_key.h",
        f"lib/systemd/system/{UNIT}",
        CONFIG,
        "usr/share/man/man8/xdp-ip-counter.8.gz",
    ):
        assert (root / path).is_file(), f"/{path} is missing after the install"
    assert (root / "usr/bin/xdp-ip-counter").stat().st_mode & 0o111
    for module in sorted((REPO / "xdp_ip_counter").rglob("*.py")):
        installed = root / "usr/lib/python3/dist-packages" / module.relative_to(REPO)
        assert installed.is_file(), f"/{installed.relative_to(root)} is missing"


def test_config_is_registered_as_a_conffile(installation: Installation) -> None:
    conffiles = installation.root.run(
        "dpkg-query", "--showformat=${Conffiles}", "--show", "xdp-ip-counter"
    ).stdout.split()
    assert f"/{CONFIG}" in conffiles, conffiles


def test_unit_is_enabled(installation: Installation) -> None:
    wants = installation.root.path / "etc/systemd/system/multi-user.target.wants" / UNIT
    assert wants.is_symlink(), f"{wants} is missing: the unit is not enabled"
    assert str(wants.readlink()) == f"/lib/systemd/system/{UNIT}"


def test_installed_unit_passes_systemd_analyze_verify(installation: Installation) -> None:
    result = installation.root.run("systemd-analyze", "verify", UNIT, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and output == "", f"systemd-analyze verify:\n{output}"


def test_program_runs_and_reads_the_shipped_config(installation: Installation) -> None:
    version = installation.root.run("xdp-ip-counter", "--version").stdout.strip()
    assert version == f"xdp-ip-counter {xdp_ip_counter.__version__}"
    # The shipped configuration is valid with the installed Python and libraries; the
    # interface is overridden because the shipped default, eth0, need not exist here.
    checked = installation.root.run("xdp-ip-counter", "--check-config", "--iface", "lo")
    assert "config file /etc/xdp-ip-counter/config.toml" in checked.stdout, checked.stdout
    installation.root.run("python3", "-c", "import bcc, numpy, prometheus_client, sdnotify")


def test_local_config_edit_survives_reinstall(installation: Installation) -> None:
    config = installation.root.path / CONFIG
    edited = config.read_text().replace("window = 60", "window = 120")
    assert edited != config.read_text()
    config.write_text(edited)
    installation.root.run("dpkg", "--force-confold", "-i", installation.deb_in_root)
    assert config.read_text() == edited


def test_purge_removes_everything(installation: Installation) -> None:
    root = installation.root
    root.run("apt-get", "-q", "purge", "-y", "xdp-ip-counter")
    status = root.run("dpkg-query", "--show", "xdp-ip-counter", check=False)
    assert status.returncode != 0, f"xdp-ip-counter still known to dpkg: {status.stdout}"
    assert not (root.path / "etc/xdp-ip-counter").exists()
    paths_after = root.tracked_paths()
    assert paths_after == installation.paths_before, (
        f"left behind: {sorted(paths_after - installation.paths_before)}; "
        f"removed: {sorted(installation.paths_before - paths_after)}"
    )


def test_root_snapshot_sees_a_left_over_file(installation: Installation) -> None:
    """The purge comparison can fail: a file added to the root shows up in the difference."""
    stray = installation.root.path / "etc" / "xdp-ip-counter-stray"
    stray.write_text("left over\n")
    try:
        assert installation.root.tracked_paths() - installation.paths_before == {
            "etc/xdp-ip-counter-stray"
        }
    finally:
        stray.unlink()
