"""A throwaway Debian 12 root for installing the .deb: debootstrap once, cached, then chroot.

The base (debootstrap --variant=minbase bookworm, plus systemd so that `systemd-analyze verify
--root=` can resolve the unit's targets) is made once and kept as a tar file in
/var/cache/xdp-ip-counter-tests/, named by a hash of everything that goes into it; each test
unpacks a fresh copy. Downloaded .debs are kept beside it, so a second run fetches nothing.

Every command runs as `unshare --mount chroot ROOT ...`: /proc and /dev/pts are mounted inside a
mount namespace that dies with the command, so no mount can outlive it, whatever happens; the
host's /dev is never bound in (debootstrap made the device nodes the root needs). A policy-rc.d
keeps maintainer scripts from starting services. Nothing here touches the host's packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("XDP_IP_COUNTER_TEST_CACHE", "/var/cache/xdp-ip-counter-tests"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
INCLUDE = ("systemd",)
SOURCES_LIST = f"""\
deb {MIRROR} {SUITE} main
deb {MIRROR} {SUITE}-updates main
deb http://deb.debian.org/debian-security {SUITE}-security main
"""
POLICY_RC = "#!/bin/sh\n# no service starts inside the test root\nexit 101\n"
CHROOT_ENV = (
    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND=noninteractive",
    "LC_ALL=C.UTF-8",
)
# Paths compared before the install and after the purge: all but package manager state,
# caches, logs and scratch space.
UNTRACKED = ("proc", "dev", "tmp", "run", "var/cache", "var/lib/apt", "var/lib/dpkg", "var/log")


def _base_key() -> str:
    inputs = [SUITE, MIRROR, VARIANT, INCLUDE, SOURCES_LIST, POLICY_RC]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]


def base_tarball() -> Path:
    """The cached base root as a tar file; debootstrap it (about a minute) when missing."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    tarball = CACHE_ROOT / f"install-root-debian12-{_base_key()}.tar"
    with open(CACHE_ROOT / ".install-root.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        with tempfile.TemporaryDirectory(dir=CACHE_ROOT, prefix="install-root-build.") as work:
            root = Path(work) / "root"
            subprocess.run(
                [
                    "debootstrap",
                    f"--variant={VARIANT}",
                    f"--include={','.join(INCLUDE)}",
                    SUITE,
                    str(root),
                    MIRROR,
                ],
                check=True,
                capture_output=True,
            )
            (root / "etc/apt/sources.list").write_text(SOURCES_LIST)
            policy_rc = root / "usr/sbin/policy-rc.d"
            policy_rc.write_text(POLICY_RC)
            policy_rc.chmod(0o755)
            for leftover in (root / "var/cache/apt/archives").glob("*.deb"):
                leftover.unlink()
            partial = tarball.with_suffix(".tar.partial")
            subprocess.run(
                ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
                check=True,
            )
            partial.rename(tarball)
    return tarball


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, as the host sees them."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


class DebianRoot:
    """An unpacked Debian 12 root at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run command inside the root (chroot, private mount namespace); output captured."""
        mounts = (
            f"mount -t proc proc '{self.path}/proc'"
            f" && mount -t devpts -o newinstance,ptmxmode=0666 devpts '{self.path}/dev/pts'"
            f" && exec chroot '{self.path}' env -i {' '.join(CHROOT_ENV)} \"$@\""
        )
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts, "sh", *command],
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the test root, {' '.join(command)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def tracked_paths(self) -> set[str]:
        """Every file, directory and link outside package manager state, caches and logs."""
        paths = set()
        for directory, dirnames, filenames in os.walk(self.path):
            relative = os.path.relpath(directory, self.path)
            if relative != ".":
                paths.add(relative)
            dirnames[:] = [
                name
                for name in dirnames
                if os.path.normpath(os.path.join(relative, name)) not in UNTRACKED
            ]
            paths.update(os.path.normpath(os.path.join(relative, name)) for name in filenames)
            paths.update(
                os.path.normpath(os.path.join(relative, name))
                for name in dirnames
                if os.path.islink(os.path.join(directory, name))
            )
        return paths


@contextlib.contextmanager
def debian_root(work_dir: Path) -> Iterator[DebianRoot]:
    """A fresh copy of the cached base in work_dir/root, with the apt cache carried over."""
    tarball = base_tarball()
    archives_cache = CACHE_ROOT / "install-root-apt-archives"
    archives_cache.mkdir(exist_ok=True)
    root_path = work_dir / "root"
    root_path.mkdir()
    try:
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root_path), "-xpf", str(tarball)], check=True
        )
        shutil.copy2("/etc/resolv.conf", root_path / "etc/resolv.conf")
        archives = root_path / "var/cache/apt/archives"
        for deb in archives_cache.glob("*.deb"):
            shutil.copy2(deb, archives / deb.name)
        yield DebianRoot(root_path)
        for deb in archives.glob("*.deb"):
            if not (archives_cache / deb.name).exists():
                shutil.copy2(deb, archives_cache / deb.name)
    finally:
        leftover = mounts_under(root_path)
        if leftover:  # never delete through a mount point
            raise AssertionError(f"mounts left under the test root, not removing it: {leftover}")
        shutil.rmtree(root_path)
