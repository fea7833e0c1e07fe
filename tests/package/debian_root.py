"""A throwaway Debian 12 root: debootstrap once, cached, then chroot.

The base is what a new user starts from: `debootstrap --variant=minbase bookworm` with git and
ca-certificates (to clone the project), nothing else. It is made once and kept as a tar file in
/var/cache/xdp-ip-counter-tests/, named by a hash of everything that goes into it; each test
unpacks a fresh copy. apt's downloaded .debs are kept beside it and bound into every root, so a
second run fetches nothing. The install test (test_install.py) and the fresh-root check
(test_fresh_root.py) share it.

Every command runs as `unshare --mount chroot ROOT ...`: /proc (and on request the host's /dev
and /sys) are mounted inside a mount namespace that dies with the command, so no mount can
outlive it, whatever happens. A policy-rc.d keeps maintainer scripts from starting services.
Nothing here touches the host's packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("XDP_IP_COUNTER_TEST_CACHE", "/var/cache/xdp-ip-counter-tests"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
INCLUDE = ("git", "ca-certificates")
SOURCES_LIST = f"""\
deb {MIRROR} {SUITE} main
deb {MIRROR} {SUITE}-updates main
deb http://deb.debian.org/debian-security {SUITE}-security main
"""
LOCAL_CA_DIR = "/usr/local/share/ca-certificates"  # update-ca-certificates(8) adds these
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
    tarball = CACHE_ROOT / f"minbase-root-debian12-{_base_key()}.tar"
    with open(CACHE_ROOT / ".minbase-root.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        with tempfile.TemporaryDirectory(dir=CACHE_ROOT, prefix="minbase-root-build.") as work:
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


# Runs inside a new mount namespace: $1 the root, $2 the apt archive cache, $3 whether to bind
# the host's /dev and /sys (1) or mount a private devpts (0); the rest is the command.
ENTER_ROOT = """set -e
root=$1 archives=$2 host_dev_sys=$3
shift 3
# The root a mount point of its own, as / is on a machine (for ip netns: mount --make-rslave /).
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
if [ "$host_dev_sys" = 1 ]; then
    mount --rbind /dev "$root/dev"
    mount --rbind /sys "$root/sys"
else
    mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
fi
mount --bind "$archives" "$root/var/cache/apt/archives"
exec chroot "$root" "$@"
"""


class DebianRoot:
    """An unpacked Debian 12 root at `path`, apt's archives bound from `archives`."""

    def __init__(self, path: Path, archives: Path) -> None:
        self.path = path
        self.archives = archives

    def command(
        self, *command: str, host_dev_sys: bool = False, env: tuple[str, ...] = ()
    ) -> list[str]:
        """The argv that runs command inside the root (chroot, private mount namespace, a
        clean environment plus env). host_dev_sys binds the host's /dev and /sys, which bcc
        and XDP need; the mounts die with the namespace."""
        return [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", ENTER_ROOT, "sh", str(self.path), str(self.archives),
            "1" if host_dev_sys else "0",
            "env", "-i", *CHROOT_ENV, *env, *command,
        ]  # fmt: skip

    def run(
        self, *command: str, check: bool = True, host_dev_sys: bool = False, timeout: float = 1800
    ) -> subprocess.CompletedProcess[str]:
        """Run command inside the root; output captured. Past timeout every process it
        started is killed (it runs in a session of its own) and the test fails."""
        with subprocess.Popen(
            self.command(*command, host_dev_sys=host_dev_sys),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as process:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, stderr = process.communicate()
                raise AssertionError(
                    f"in the test root, {' '.join(command)} took over {timeout} s:\n"
                    f"{stdout}{stderr}"
                ) from None
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
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
    """A fresh copy of the cached base in work_dir/root, apt's download cache bound in."""
    tarball = base_tarball()
    archives_cache = CACHE_ROOT / "minbase-root-apt-archives"
    (archives_cache / "partial").mkdir(parents=True, exist_ok=True)
    root_path = work_dir / "root"
    root_path.mkdir()
    try:
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root_path), "-xpf", str(tarball)], check=True
        )
        root = DebianRoot(root_path, archives_cache)
        # The host's network as it is: its resolver, and the certificate authorities it was
        # given locally (a site's TLS-inspecting proxy, say), so that pip reaches PyPI there
        # as it does here.
        shutil.copy2("/etc/resolv.conf", root_path / "etc/resolv.conf")
        local_cas = sorted(Path(LOCAL_CA_DIR).glob("**/*.crt"))
        for certificate in local_cas:
            target = root_path / LOCAL_CA_DIR.lstrip("/") / certificate.relative_to(LOCAL_CA_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(certificate, target)
        if local_cas:
            root.run("update-ca-certificates")
        yield root
    finally:
        leftover = mounts_under(root_path)
        if leftover:  # never delete through a mount point
            raise AssertionError(f"mounts left under the test root, not removing it: {leftover}")
        shutil.rmtree(root_path)
