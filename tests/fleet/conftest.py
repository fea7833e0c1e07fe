"""Fleet fixtures: two Debian 12 VMs booted with qemu, ready for the Ansible role.

The image is built once per set of inputs and cached (see debian_image.py); every run boots the
VMs from throw-away overlays, with a fresh SSH key, and builds the .deb from this checkout with
packaging/build-deb.sh. The VMs are stopped and their overlays removed whatever happens. Logs
(console, qemu, ansible) stay in the pytest temporary directory, named in failure messages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_fleet import REPO, Fleet, record_time
from debian_image import ensure_image
from qemu_vm import QEMU, make_ssh_key, running_pair

from tests.conftest import ROOT_REASON, require


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two booted VMs with the .deb built from this checkout; no playbook run yet."""
    require(os.geteuid() == 0, ROOT_REASON)
    require(shutil.which(QEMU), f"{QEMU} is not installed (packaging/bootstrap.sh installs it)")
    for tool in ("debootstrap", "mkfs.ext4", "qemu-img", "ansible-playbook", "ssh"):
        require(shutil.which(tool), f"{tool} is not installed (packaging/bootstrap.sh installs it)")
    workdir = tmp_path_factory.mktemp("fleet")
    deb_dir = workdir / "deb"
    # The .deb builds while the VMs boot.
    deb_build = subprocess.Popen(
        [str(REPO / "packaging" / "build-deb.sh"), str(deb_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # ssh's control sockets need a short path (108 bytes at most).
    control_path_dir = Path(tempfile.mkdtemp(prefix="fleet-ssh-"))
    timings = workdir / "timings.txt"  # where the minutes go, for whoever tunes this test
    started = time.monotonic()
    try:
        image = ensure_image(log=workdir / "image-build.log")
        record_time(timings, "image ready", started)
        ssh_key = make_ssh_key(workdir)
        with running_pair(image, workdir, ssh_key) as machines:
            record_time(timings, "VMs booted", started)
            deb_output, _ = deb_build.communicate(timeout=600)
            assert deb_build.returncode == 0, f"packaging/build-deb.sh failed:\n{deb_output}"
            deb = Path(deb_output.strip().splitlines()[-1])
            assert deb.is_file(), f"build-deb.sh named {deb}, which does not exist"
            record_time(timings, ".deb built", started)
            yield Fleet(
                machines=machines,
                deb=deb,
                workdir=workdir,
                control_path_dir=control_path_dir,
                timings=timings,
            )
    finally:
        if deb_build.poll() is None:
            deb_build.kill()
            deb_build.wait()
        shutil.rmtree(control_path_dir, ignore_errors=True)
