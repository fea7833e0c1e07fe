"""The wheel, the way in for pip: built from the checkout without the network, it carries the BPF
source and declares what pyproject.toml declares; installed into a venv made from Debian's Python
with --system-site-packages, Debian's packages satisfy its dependencies (nothing from PyPI) and
its xdp-ip-counter serves /metrics, compiling the BPF source installed in the venv.

Needs (Debian packages): python3-pip, python3-setuptools and python3-wheel to build the wheel,
python3-venv for the venv; for the daemon what the .deb depends on (python3-bpfcc,
python3-numpy, python3-prometheus-client, python3-sdnotify; python3-yaml and python3-bcrypt for
the `web` extra, installed here too), kernel headers, iproute2 and curl.
"""

from __future__ import annotations

import email
import os
import re
import subprocess
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.daemon import serving_daemon
from tests.support.netns import namespace_with_veths

from .deb import REPO

PYTHON = "/usr/bin/python3"  # Debian's, which sees Debian's python3-* packages
PORT = 3041
# Modules of Debian's Python that building the wheel and making the venv take, and their packages.
BUILD_MODULES = {
    "pip": "python3-pip",
    "setuptools": "python3-setuptools",
    "wheel": "python3-wheel",
    "ensurepip": "python3-venv",
}


def run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A command with an environment that points at neither the checkout nor PyPI."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "XDP_IP_COUNTER_"))
    }
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout's files (so that no build/ or *.egg-info
    lands in the checkout) with Debian's setuptools, without build isolation or an index."""
    source = tmp_path_factory.mktemp("source")
    missing = [
        package
        for module, package in BUILD_MODULES.items()
        if run(PYTHON, "-c", f"import {module}", cwd=source).returncode
    ]
    require(not missing, f"building and installing the wheel needs {', '.join(missing)}")
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # listed but deleted in the working tree: not copied
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    output = tmp_path_factory.mktemp("wheel")
    result = run(
        PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", output, ".",
        cwd=source,
    )  # fmt: skip
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}{result.stderr}"
    wheels = list(output.glob("xdp_ip_counter-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {output}: {wheels}"
    return wheels[0]


def test_wheel_carries_the_bpf_source_as_installed_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        data = f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.data/data"
        for source in sorted((REPO / "bpf").glob("*.[ch]")):
            name = f"{data}/share/xdp-ip-counter/bpf/{source.name}"
            assert name in names, f"{name} is not in the wheel: {sorted(names)}"
            assert archive.read(name) == source.read_bytes(), name
        assert not [name for name in names if name.startswith("bpf/")], names


def requirement(text: str) -> tuple[str, str | None]:
    """("pyyaml", "web") for "PyYAML ; extra == 'web'": canonical name, extra or None."""
    name = re.split(r"[\s;<>=!~\[(]", text.strip(), maxsplit=1)[0]
    extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", text)
    return re.sub(r"[-_.]+", "-", name).lower(), extra.group(1) if extra else None


def test_wheel_requires_what_pyproject_declares(wheel: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {requirement(text) for text in project["dependencies"]}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        declared |= {(requirement(text)[0], extra) for text in requirements}
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
    required = {requirement(text) for text in metadata.get_all("Requires-Dist", [])}
    assert required == declared
    assert metadata.get_all("Provides-Extra") == ["web"]
    # Debian's python3-bpfcc, never PyPI's unrelated "bcc" (see pyproject.toml).
    assert "bcc" not in {name for name, _ in required}


@pytest.fixture
def venv(wheel: Path, tmp_path: Path) -> Path:
    """A venv made from Debian's Python with --system-site-packages, the wheel (with its `web`
    extra) installed without an index: pip fails unless Debian's packages satisfy every
    requirement."""
    directory = tmp_path / "venv"
    made = run(PYTHON, "-m", "venv", "--system-site-packages", directory, cwd=tmp_path)
    assert made.returncode == 0, f"python3 -m venv failed:\n{made.stdout}{made.stderr}"
    installed = run(
        directory / "bin" / "pip", "install", "--no-index", "--no-cache-dir", f"{wheel}[web]",
        cwd=tmp_path,
    )  # fmt: skip
    assert installed.returncode == 0, f"pip install failed:\n{installed.stdout}{installed.stderr}"
    return directory


@pytest.fixture
def namespace() -> Iterator[tuple[str, str]]:
    """(namespace, interface): a veth inside a network namespace of this test's."""
    with namespace_with_veths(f"w{os.getpid()}", 1) as created:
        yield created.name, created.veths[0]


@pytest.mark.root
def test_wheel_in_a_system_site_packages_venv_serves_metrics(
    venv: Path, namespace: tuple[str, str], tmp_path: Path
) -> None:
    netns, interface = namespace
    installed_bpf = venv / "share" / "xdp-ip-counter" / "bpf"
    assert (installed_bpf / "xdp_ip_counter.c").is_file()
    assert (installed_bpf / "parsing.h").is_file()
    assert (installed_bpf / "source_key.h").is_file()
    # The venv's package and BPF source, not the checkout's (nor an installed .deb's).
    where = run(
        venv / "bin" / "python", "-c",
        "import xdp_ip_counter.bpf as b; print(b.__file__); print(b.source_dir())",
        cwd=tmp_path,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    module_file, bpf_dir = where.stdout.split()
    assert Path(module_file).is_relative_to(venv), module_file
    assert Path(bpf_dir) == installed_bpf, bpf_dir

    config = tmp_path / "config.toml"
    config.write_text("")
    command = [
        str(venv / "bin" / "xdp-ip-counter"),
        "-c", str(config), "-i", interface, "-p", "22", "-s", str(PORT),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XDP_IP_COUNTER_"))}
    env.pop("NOTIFY_SOCKET", None)
    with serving_daemon(
        command, netns=netns, port=PORT, log_path=tmp_path / "daemon.log", env=env, cwd=tmp_path
    ) as daemon:
        assert "xdp_ip_counter_" in daemon.metrics, daemon.metrics[:2000]
        log_text = daemon.log()
        assert f"XDP program source: {installed_bpf / 'xdp_ip_counter.c'}" in log_text, log_text
        assert daemon.stop() == 0, daemon.log()
