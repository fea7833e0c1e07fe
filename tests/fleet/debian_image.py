"""A Debian 12 disk image for the fleet tests, built with debootstrap and cached by its inputs.

The image holds everything the xdp-ip-counter .deb depends on (read from
packaging/debian/control), the kernel and its matching headers for bcc, and what Ansible needs on
a managed host (python3, python3-apt), so the playbook installs the .deb without reaching the
network; the role still works with a network, where apt fetches whatever is missing.

Nothing about one particular VM is baked in. Each boot passes on the kernel command line:
  fleettest.authorized_key=<base64 of an OpenSSH public key>   root's authorized_keys
  fleettest.eth1=<address/prefix>[,<address/prefix>...]        static addresses of eth1
  systemd.hostname=<name>                                      (systemd's own parameter)
and a small unit in the image turns those into files under /root/.ssh and /run/systemd/network
before ssh and systemd-networkd start. So one cached image serves every VM of every run, and each
run uses a fresh SSH key.

The cache lives in /var/cache/xdp-ip-counter-tests/debian12-<key>/, where <key> is a hash of this
file (configuration, build steps) and of the package list. A build happens in a temporary
directory beside it, under a lock, and is renamed into place only when complete.

Build or show the cached image (root): /usr/bin/python3 tests/fleet/debian_image.py
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("XDP_IP_COUNTER_TEST_CACHE", "/var/cache/xdp-ip-counter-tests"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"

CONTROL_FILE = Path(__file__).resolve().parents[2] / "packaging" / "debian" / "control"
# Prints the Debian packages of pyproject.toml's requirements, as dh-python maps them into the
# .deb's ${python3:Depends} and ${python3:Recommends}.
PYTHON_DEPENDS = Path(__file__).resolve().parents[2] / "packaging" / "python-depends.py"

# What booting, Ansible and the test need on the host; the .deb's own Depends are added from
# packaging/debian/control and pyproject.toml (package_dependencies()), so the image follows
# the package.
BASE_PACKAGES = (
    # booting and being reachable
    "systemd-sysv",
    "udev",
    "kmod",
    "initramfs-tools",
    "linux-image-amd64",
    "openssh-server",
    "iproute2",
    # bcc needs headers matching the running kernel, which linux-headers-amd64 gives because
    # it comes from the same archive as linux-image-amd64 (the .deb only recommends headers)
    "linux-headers-amd64",
    # Ansible on the managed host (apt module), and curl for the operator's checks
    "python3",
    "python3-apt",
    "curl",
    "ca-certificates",
)

# Files written into the image. Paths are relative to its root.
SETUP_SCRIPT = r"""#!/bin/sh
# Per-boot settings from the kernel command line (see tests/fleet/debian_image.py).
set -eu
authorized_key=""
eth1_addresses=""
for word in $(cat /proc/cmdline); do
    case "$word" in
        fleettest.authorized_key=*) authorized_key="${word#fleettest.authorized_key=}" ;;
        fleettest.eth1=*) eth1_addresses="${word#fleettest.eth1=}" ;;
    esac
done
if [ -n "$authorized_key" ]; then
    install -d -m 700 /root/.ssh
    printf '%s\n' "$authorized_key" | base64 -d >/root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
fi
if [ -n "$eth1_addresses" ]; then
    install -d /run/systemd/network
    {
        printf '[Match]\nName=eth1\n\n[Network]\nLinkLocalAddressing=ipv6\nIPv6AcceptRA=no\n'
        for address in $(printf '%s' "$eth1_addresses" | tr ',' ' '); do
            printf 'Address=%s\n' "$address"
        done
    } >/run/systemd/network/20-eth1.network
fi
"""

SETUP_UNIT = """[Unit]
Description=Fleet test: SSH key and eth1 addresses from the kernel command line
DefaultDependencies=no
After=local-fs.target
Before=network-pre.target systemd-networkd.service ssh.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/fleettest-setup

[Install]
WantedBy=multi-user.target
"""

IMAGE_FILES = {
    "etc/fstab": "/dev/vda / ext4 defaults,noatime 0 0\n",
    "etc/hostname": "fleettest\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    # qemu's user-mode network answers DNS at 10.0.2.3
    "etc/resolv.conf": "nameserver 10.0.2.3\n",
    "etc/apt/sources.list": f"deb {MIRROR} {SUITE} main\n",
    "etc/systemd/network/10-eth0.network": (
        "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\nIPv6AcceptRA=no\n"
    ),
    # Nothing may hold the dpkg lock while Ansible installs the package.
    "etc/apt/apt.conf.d/20auto-upgrades": (
        'APT::Periodic::Update-Package-Lists "0";\nAPT::Periodic::Unattended-Upgrade "0";\n'
    ),
    "usr/local/sbin/fleettest-setup": SETUP_SCRIPT,
    "etc/systemd/system/fleettest-setup.service": SETUP_UNIT,
}
EXECUTABLE_FILES = {"usr/local/sbin/fleettest-setup"}
ENABLED_UNITS = ("systemd-networkd.service", "fleettest-setup.service", "ssh.service")
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer")

FREE_SPACE_BYTES = 2 * 1024**3  # room in the image for the .deb and logs
UNUSED_IMAGE_DAYS = 7  # images of other inputs are removed after this long unused


class ImageBuildError(Exception):
    """The image could not be built; the message names the step."""


@dataclass(frozen=True)
class DebianImage:
    """A built image: a raw ext4 root filesystem and the kernel and initrd to boot it."""

    directory: Path
    rootfs: Path
    kernel: Path
    initrd: Path
    kernel_release: str


def package_dependencies(control_file: Path = CONTROL_FILE) -> list[str]:
    """The Depends of the xdp-ip-counter binary package, first alternative of each, without
    versions, with ${python3:Depends} and ${python3:Recommends} (the web extra, so that the
    role installs with recommends offline too) as packaging/python-depends.py maps them."""
    return control_depends(control_file) + python_dependencies()


def python_dependencies(script: Path = PYTHON_DEPENDS) -> list[str]:
    """The Debian packages of pyproject.toml's requirements (dependencies and extras)."""
    result = subprocess.run(
        ["/usr/bin/python3", str(script)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ImageBuildError(f"{script} failed: {result.stderr.strip()}")
    return [
        line.split("|")[0].split("(")[0].strip()
        for line in result.stdout.splitlines()
        if line.strip()
    ]


def control_depends(control_file: Path = CONTROL_FILE) -> list[str]:
    """The Depends field of the binary package in control, substitution variables left out."""
    stanza = control_file.read_text().split("\nPackage: xdp-ip-counter\n", 1)[1]
    field_lines: list[str] = []
    for line in stanza.splitlines():
        if line.startswith("Depends:"):
            field_lines.append(line.removeprefix("Depends:"))
        elif field_lines and line.startswith((" ", "\t")):
            field_lines.append(line)
        elif field_lines:
            break
    packages = []
    for item in " ".join(field_lines).split(","):
        first_alternative = item.split("|")[0].strip()
        name = first_alternative.split("(")[0].split(":")[0].strip()
        if name and not name.startswith("$"):
            packages.append(name)
    return packages


def image_packages() -> list[str]:
    return sorted(set(BASE_PACKAGES) | set(package_dependencies()))


def image_key() -> str:
    """Hash of every input of the build: this file and the package list."""
    inputs = Path(__file__).read_bytes() + "\n".join(image_packages()).encode()
    return hashlib.sha256(inputs).hexdigest()[:16]


def cached_image(cache_root: Path = CACHE_ROOT) -> DebianImage | None:
    """The image for the current inputs if it has been built, else None."""
    directory = cache_root / f"debian12-{image_key()}"
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    return DebianImage(
        directory=directory,
        rootfs=directory / "rootfs.raw",
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        kernel_release=manifest["kernel_release"],
    )


def ensure_image(cache_root: Path = CACHE_ROOT, log: Path | None = None) -> DebianImage:
    """The cached image for the current inputs, built first if missing (needs root)."""
    image = cached_image(cache_root)
    if image is not None:
        (image.directory / "last-used").touch()
        return image
    cache_root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_root / ".lock"):
        image = cached_image(cache_root)  # someone else may have built it while we waited
        if image is not None:
            return image
        _remove_abandoned_builds(cache_root)
        _remove_unused_images(cache_root)
        build_dir = cache_root / f".build-{image_key()}-{os.getpid()}"
        try:
            _build(build_dir, log or cache_root / f"build-{image_key()}.log")
            os.rename(build_dir, cache_root / f"debian12-{image_key()}")
        finally:
            _remove_build_dir(build_dir)
    image = cached_image(cache_root)
    assert image is not None
    (image.directory / "last-used").touch()
    return image


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    mount_points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mount_point = line.split()[1].replace("\\040", " ")
        if mount_point.startswith(prefix):
            mount_points.append(mount_point)
    return sorted(mount_points, key=len, reverse=True)


def _remove_build_dir(build_dir: Path) -> None:
    """Remove a build directory, unmounting first whatever debootstrap left mounted in it."""
    if not build_dir.exists():
        return
    for mount_point in _mounts_under(build_dir):
        subprocess.run(["umount", "--lazy", mount_point], check=False)
    if _mounts_under(build_dir):
        raise ImageBuildError(f"{build_dir} still has mounts in it; not removing it")
    shutil.rmtree(build_dir)


def _remove_abandoned_builds(cache_root: Path) -> None:
    # Called under the lock, so no other build is running.
    for build_dir in cache_root.glob(".build-*"):
        _remove_build_dir(build_dir)


def _remove_unused_images(cache_root: Path) -> None:
    # Images built from other inputs (other checkouts, older commits) that no run used lately.
    for directory in cache_root.glob("debian12-*"):
        last_used = directory / "last-used"
        stamp = last_used if last_used.exists() else directory
        if time.time() - stamp.stat().st_mtime > UNUSED_IMAGE_DAYS * 86400:
            shutil.rmtree(directory)


def _run(step: str, command: list[str], log: Path) -> None:
    with log.open("a") as log_file:
        log_file.write(f"\n$ {' '.join(command)}\n")
        log_file.flush()
        result = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise ImageBuildError(f"{step} failed (exit {result.returncode}); see {log}:\n{tail}")


def _install_in_root(root: Path, packages: list[str], deb_cache: Path, log: Path) -> None:
    """apt-get install inside the root, with /proc mounted and no service started. Packages
    already downloaded (deb_cache) are linked in first, and new downloads linked back."""
    archives = root / "var/cache/apt/archives"
    for deb in deb_cache.glob("*.deb"):
        if not (archives / deb.name).exists():
            os.link(deb, archives / deb.name)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        _run(
            "apt-get install of the package's dependencies",
            [
                "chroot", str(root), "env", "DEBIAN_FRONTEND=noninteractive",
                "apt-get", "install", "-y", "-q", "--no-install-recommends",
                *packages,
            ],
            log,
        )  # fmt: skip
        for deb in archives.glob("*.deb"):
            if not (deb_cache / deb.name).exists():
                os.link(deb, deb_cache / deb.name)
    finally:
        subprocess.run(["umount", str(root / "proc")], check=False)
        policy.unlink()


def _build(build_dir: Path, log: Path) -> None:
    started = time.monotonic()
    root = build_dir / "root"
    root.mkdir(parents=True)
    log.write_text(f"building Debian {SUITE} image {image_key()} in {build_dir}\n")
    deb_cache = build_dir.parent / "debs"
    deb_cache.mkdir(exist_ok=True)
    # debootstrap installs the base, but its resolver knows no virtual packages (a Depends on
    # one, like python3-bcrypt's on python3-cffi-backend-api-min, breaks it): the package's
    # own dependencies go in with apt-get inside the new root.
    try:
        _run(
            "debootstrap",
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                f"--cache-dir={deb_cache}",
                SUITE,
                str(root),
                MIRROR,
            ],
            log,
        )
        _install_in_root(root, package_dependencies(), deb_cache, log)
    except ImageBuildError:
        debootstrap_log = root / "debootstrap" / "debootstrap.log"
        if debootstrap_log.exists():
            with log.open("a") as log_file:
                log_file.write(f"\n--- {debootstrap_log}:\n{debootstrap_log.read_text()}")
        raise
    if _mounts_under(build_dir):
        raise ImageBuildError(f"debootstrap left mounts under {root}")

    for relative_path, content in IMAGE_FILES.items():
        path = root / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.write_text(content)
        path.chmod(0o755 if relative_path in EXECUTABLE_FILES else 0o644)
    _run("enabling units", ["systemctl", f"--root={root}", "enable", *ENABLED_UNITS], log)
    _run("masking units", ["systemctl", f"--root={root}", "mask", *MASKED_UNITS], log)
    for directory in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (root / directory).glob("*"):
            if path.is_file():
                path.unlink()

    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageBuildError(f"expected one kernel in {root}/boot, found {kernels}")
    kernel_release = kernels[0].name.removeprefix("vmlinuz-")
    if not (root / "usr/src" / f"linux-headers-{kernel_release}").is_dir():
        raise ImageBuildError(f"no headers for kernel {kernel_release} in the image")
    shutil.copy2(kernels[0], build_dir / "vmlinuz")
    shutil.copy2(root / "boot" / f"initrd.img-{kernel_release}", build_dir / "initrd.img")

    used_bytes = sum(entry.stat(follow_symlinks=False).st_size for entry in root.rglob("*"))
    size_bytes = (int(used_bytes * 1.25) + FREE_SPACE_BYTES) // (1024 * 1024) * (1024 * 1024)
    rootfs = build_dir / "rootfs.raw"
    with rootfs.open("wb") as rootfs_file:
        rootfs_file.truncate(size_bytes)
    _run(
        "mkfs.ext4",
        ["mkfs.ext4", "-q", "-F", "-L", "fleetroot", "-d", str(root), str(rootfs)],
        log,
    )
    shutil.rmtree(root)
    manifest = {
        "key": image_key(),
        "suite": SUITE,
        "packages": image_packages(),
        "kernel_release": kernel_release,
        "size_bytes": size_bytes,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (build_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.sync()


def main() -> int:
    if os.geteuid() != 0:
        print("building the image needs root (debootstrap)", file=sys.stderr)
        return 2
    started = time.monotonic()
    image = ensure_image()
    print(f"{image.directory} (kernel {image.kernel_release}, {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
