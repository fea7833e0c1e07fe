"""HTTP test support: a sample View to serve, certificates made with openssl, bcrypt hashes,
web configuration files and Authorization headers (shared by tests/unit's web tests)."""

from __future__ import annotations

import base64
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bcrypt
import numpy as np

from tests.conftest import require
from xdp_ip_counter.config import PortFilter, Settings
from xdp_ip_counter.layout import KEY_DTYPE, VALUE_DTYPE
from xdp_ip_counter.metrics import View
from xdp_ip_counter.window import Snapshot, active_set

# -- a View to serve ---------------------------------------------------------------------------

S = 1_000_000_000
MS = 1_000_000
NOW = 9000 * S
WALL = 1714564800.0  # 2024-05-01T12:00:00Z
IFNAMES = {2: "eth0", 3: "eth1"}


def key(ip: str, port: int, proto: int, ifindex: int) -> tuple:
    address = ipaddress.ip_address(ip)
    raw = ipaddress.IPv6Address(f"::ffff:{ip}").packed if address.version == 4 else address.packed
    return (raw, ifindex, port, proto, address.version)


# (address, port, proto, ifindex, first_seen, last_seen, packets, bytes)
ENTRIES = [
    ("10.8.0.10", 22, 6, 2, NOW - 40 * S, NOW - 1 * S - 250 * MS, 3, 180),
    ("10.8.0.9", 22, 6, 2, NOW - 30 * S, NOW - 20 * S, 1, 60),
    ("10.8.0.9", 22, 6, 3, NOW - 35 * S - 1 * MS, NOW - 10 * S, 2, 120),  # second interface
    ("10.8.0.9", 22, 17, 3, NOW - 5 * S, NOW - 5 * S, 1, 40),
    ("fd00:8::1", 22, 6, 3, NOW - 2 * S, NOW - 2 * S, 1, 80),
    ("fd00:8::abcd:0:0:1", 443, 6, 2, NOW - 3 * S, NOW - 3 * S, 4, 320),
    ("10.8.0.11", 443, 6, 9, NOW - 4 * S, NOW - 4 * S, 1, 60),  # ifindex without a name
    ("10.8.0.12", 5353, 17, 2, NOW - 6 * S, NOW - 6 * S, 2, 200),
    ("10.8.0.13", 22, 6, 2, NOW - 90 * S, NOW - 61 * S, 9, 900),  # outside the window
]


def sample_view(
    ports: PortFilter | None = None, serve_ip_list: bool = True, **changes: Any
) -> View:
    keys = np.array(
        [key(ip, port, proto, ifindex) for ip, port, proto, ifindex, *_ in ENTRIES], KEY_DTYPE
    )
    values = np.array([tuple(e[4:]) for e in ENTRIES], VALUE_DTYPE)
    snap = Snapshot(keys, values, NOW, WALL, {"recorded": 12}, len(keys), 4096)
    settings = Settings(
        interfaces=("eth0", "eth1"),
        ports=ports or PortFilter.all(),
        window=60,
        serve_ip_list=serve_ip_list,
    )
    view = View(
        active=active_set(snap, 60, IFNAMES),
        snapshot=snap,
        settings=settings,
        last_refresh_time=WALL,
        refresh_duration=0.01,
        reload_time=WALL,
        version="0.0.0-test",
    )
    return replace(view, **changes) if changes else view


# -- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    """A CA, a server certificate for 127.0.0.1 and ::1 signed by it, a second CA for clients
    with a client certificate, and an unrelated CA (which must not verify the server)."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path
    stranger_cert: Path  # a client certificate signed by the unrelated CA
    stranger_key: Path


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt", directory / f"{name}.key"


def _make_leaf(directory: Path, name: str, ca: str, extensions: str) -> tuple[Path, Path]:
    (directory / f"{name}.ext").write_text(extensions)
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt", directory / f"{name}.key"


def make_pki(directory: Path) -> PKI:
    """Everything the TLS tests need, made with the openssl command line in `directory`."""
    require(shutil.which("openssl"), "the openssl command line tool is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    ca, _ = _make_ca(directory, "test-ca")
    client_ca, _ = _make_ca(directory, "client-ca")
    stranger_ca, _ = _make_ca(directory, "stranger-ca")
    leaf = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    server_cert, server_key = _make_leaf(
        directory,
        "server",
        "test-ca",
        leaf + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:::1\n",
    )
    client_cert, client_key = _make_leaf(
        directory, "client", "client-ca", leaf + "extendedKeyUsage=clientAuth\n"
    )
    stranger_cert, stranger_key = _make_leaf(
        directory, "stranger", "stranger-ca", leaf + "extendedKeyUsage=clientAuth\n"
    )
    return PKI(
        directory,
        ca,
        server_cert,
        server_key,
        client_ca,
        client_cert,
        client_key,
        stranger_ca,
        stranger_cert,
        stranger_key,
    )


# -- web configuration and credentials ----------------------------------------------------------


def bcrypt_hash(password: str, prefix: bytes = b"$2b$") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return (prefix + hashed[4:]).decode()


def write_web_config(directory: Path, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def tls_section(pki: PKI, extra: str = "") -> str:
    return (
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        + extra
    )


def basic(user: bytes | str, password: bytes | str) -> str:
    raw = (user.encode() if isinstance(user, str) else user) + b":"
    raw += password.encode() if isinstance(password, str) else password
    return "Basic " + base64.b64encode(raw).decode()
