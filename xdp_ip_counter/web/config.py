"""The web configuration file (``--web.config.file``): TLS, basic authentication, headers.

This module reads and checks the file into a WebConfig; WebConfig.policy() turns it into what
the server (server.py) applies to each connection, with auth.py checking passwords.

The format is the Prometheus exporter-toolkit's (docs/web-configuration.md in
github.com/prometheus/exporter-toolkit), so one file can serve this daemon and the exporters next
to it. YAML, three sections:

- ``tls_server_config``: ``cert_file`` and ``key_file`` (required together), ``client_auth_type``
  (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert), ``client_ca_file`` or
  ``client_ca`` (PEM text), ``min_version`` / ``max_version`` (TLS10..TLS13, default TLS12 to
  TLS13), ``cipher_suites`` (Go names, for TLS 1.2 and below), ``prefer_server_cipher_suites``.
- ``basic_auth_users``: user name -> bcrypt hash. Empty or absent: no authentication.
- ``http_server_config``: ``headers`` (the five response headers exporter-toolkit allows) and
  ``http2`` (accepted and ignored: this server speaks HTTP/1.0).

What the toolkit has and this does not (each rejected with a message saying so, never ignored,
because a security setting that is silently dropped is worse than a refusal): inline ``cert`` /
``key``, ``client_allowed_sans``, ``curve_preferences``, the RequestClientCert and
RequireAnyClientCert policies (they accept certificates nobody verified) and ``rate_limit``.

The toolkit re-reads the file on every request; this daemon reads it at start-up and on SIGHUP,
with the rest of the configuration (a bad file is rejected whole and the previous one stays).
Relative paths in the file are relative to the file's directory, as in the toolkit.

PyYAML and bcrypt (the `web` extra, python3-yaml and python3-bcrypt) are imported only when a
file is read and when it has users: without them the daemon runs with no web configuration
file, and refuses one with a ConfigError that names the package to install.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from xdp_ip_counter.config import ConfigError, file_key
from xdp_ip_counter.web.auth import BasicAuth, VerifiedPasswords
from xdp_ip_counter.web.server import Policy

MAX_FILE_BYTES = 1 << 20  # a web configuration is a few hundred bytes; refuse to parse megabytes

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's crypto/tls names (what exporter-toolkit accepts) -> OpenSSL's, for TLS 1.2 and below.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
# TLS 1.3 suites are not configurable (not in Go either): accepted in the list, without effect.
TLS13_CIPHER_SUITES = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}

# exporter-toolkit's allowed extra headers, with the values it allows (None: any value).
EXTRA_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

SECTIONS = ("tls_server_config", "http_server_config", "basic_auth_users")
TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_ca",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
)
HTTP_KEYS = ("headers", "http2")

# Keys of the toolkit's format that this implementation refuses, and why.
UNSUPPORTED = {
    "rate_limit": "not supported by xdp-ip-counter (connections and /list renders are limited "
    "instead; see the README)",
    "tls_server_config.cert": "inline certificates are not supported: use cert_file",
    "tls_server_config.key": "inline keys are not supported: use key_file",
    "tls_server_config.client_allowed_sans": "not supported by xdp-ip-counter: use a client CA "
    "that signs only the clients you allow",
    "tls_server_config.curve_preferences": "not supported (Python's ssl module cannot set a "
    "list of curves): OpenSSL's defaults are used",
}

_BCRYPT_HASH = re.compile(rb"\$2[aby]\$([0-9]{2})\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True)
class WebConfig:
    """A validated web configuration: what the HTTP server applies to every connection.

    `users` maps a user name (UTF-8 bytes) to its bcrypt hash; empty means no authentication.
    `tls` is a server context ready for wrap_socket, or None for plain HTTP. `notes` are things
    the operator should read once (logged at start-up and reload).
    """

    path: Path | None = None
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    users: Mapping[bytes, bytes] = field(default_factory=lambda: MappingProxyType({}))
    headers: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the log: what the file turns on."""
        if self.path is None:
            return "no web configuration file: plain HTTP, no authentication"
        parts = ["TLS" if self.tls is not None else "plain HTTP (no TLS)"]
        count = len(self.users)
        if count:
            parts.append(f"basic auth for {count} user{'s' if count > 1 else ''}")
        else:
            parts.append("no authentication")
        if self.headers:
            parts.append("headers " + ", ".join(name for name, _ in self.headers))
        return f"{self.path}: " + "; ".join(parts)

    def policy(self, realm: str, verified: VerifiedPasswords) -> Policy:
        """What the server applies to each connection: the TLS context, basic auth for the users
        (in `realm`, successes remembered in `verified`), the headers."""
        auth = BasicAuth(self.users, realm, verified) if self.users else None
        return Policy(tls=self.tls, auth=auth, headers=self.headers)


NO_WEB_CONFIG = WebConfig()


# -- reading the file ---------------------------------------------------------------------------


# Debian package of each optional module: what to install when one is missing.
OPTIONAL_MODULES = {"yaml": ("PyYAML", "python3-yaml"), "bcrypt": ("bcrypt", "python3-bcrypt")}


def _missing(module: str, where: str, needed_for: str) -> ConfigError:
    """The error for an optional module (yaml or bcrypt) that cannot be imported."""
    distribution, package = OPTIONAL_MODULES[module]
    return ConfigError(
        where,
        f"{needed_for} needs {distribution}: apt-get install {package} (or pip install "
        "'xdp-ip-counter[web]')",
    )


@functools.cache
def _unique_key_loader(yaml: ModuleType) -> type:
    """YAML's safe loader, refusing a key given twice in one mapping (a second entry for a user
    would otherwise silently replace the first)."""

    def construct_unique_mapping(loader: Any, node: Any) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            with contextlib.suppress(TypeError):  # unhashable: construct_mapping says so below
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found the key {key!r} twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return loader.construct_mapping(node, deep=True)

    loader = type("UniqueKeyLoader", (yaml.SafeLoader,), {})
    loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_unique_mapping)
    return loader


def _read_yaml(path: Path, named_by: str | None) -> object:
    where = str(path)
    pointer = f" (named by {named_by})" if named_by else ""
    try:
        import yaml  # noqa: PLC0415 - the web extra: only with a web configuration file
    except ImportError:
        raise _missing("yaml", named_by or where, f"reading {path}") from None
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(where, f"web configuration file does not exist{pointer}") from None
    except OSError as error:
        raise ConfigError(where, f"cannot read{pointer}: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(where, f"larger than {MAX_FILE_BYTES} bytes: not a web configuration")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(where, f"not UTF-8 text (byte {error.start})") from None
    try:
        return yaml.load(text, Loader=_unique_key_loader(yaml))  # a SafeLoader: plain data only
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(where, f"invalid YAML{at}: {problem}") from None


def _kind(value: object) -> str:
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
        (dict, "a mapping"),
    ]
    if value is None:
        return "nothing (null)"
    for kind, name in kinds:
        if isinstance(value, kind):
            shown = repr(value)
            return f"{name} ({shown[:37] + '...' if len(shown) > 40 else shown})"
    return f"a {type(value).__name__}"


def _check_keys(table: dict[Any, Any], known: tuple[str, ...], path: Path, prefix: str) -> None:
    for key in table:
        dotted = f"{prefix}{key}"
        where = file_key(path, dotted)
        if dotted in UNSUPPORTED:
            raise ConfigError(where, UNSUPPORTED[dotted])
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(where, f"unknown key ({hint}known keys: {', '.join(known)})")


def _table(value: object, where: str) -> dict[Any, Any]:
    """A section: a mapping, or nothing (an empty section, as YAML gives for a bare key)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(where, f"expected a mapping, got {_kind(value)}")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, f"expected a string, got {_kind(value)}")
    return value


def load_web_config(path: Path, named_by: str | None = None) -> WebConfig:
    """Read and check a web configuration file; every problem is a ConfigError naming the file
    and the key ("/etc/xdp-ip-counter/web.yml: key 'tls_server_config.cert_file': ...").

    Certificates and keys are loaded here, so a file that loads is one that serves. `named_by`
    says which setting pointed at the file, for the message when it does not exist.
    """
    path = path.absolute()
    document = _read_yaml(path, named_by)
    top = _table(document, str(path))
    _check_keys(top, SECTIONS, path, "")
    notes: list[str] = []
    tls = _tls_context(
        _table(top.get("tls_server_config"), file_key(path, "tls_server_config")), path, notes
    )
    users = _users(_table(top.get("basic_auth_users"), file_key(path, "basic_auth_users")), path)
    headers = _http_server_config(
        _table(top.get("http_server_config"), file_key(path, "http_server_config")), path, notes
    )
    if users and tls is None:
        notes.append(
            f"{path}: basic_auth_users without tls_server_config: passwords cross the network "
            "in clear text; add a certificate or keep the listen address on loopback"
        )
    return WebConfig(
        path=path, tls=tls, users=MappingProxyType(users), headers=headers, notes=tuple(notes)
    )


# -- tls_server_config -------------------------------------------------------------------------


def _file_path(value: object, where: str, base: Path) -> Path:
    text = _string(value, where)
    if not text:
        raise ConfigError(where, "empty file name")
    return base / text  # an absolute text replaces base


def _readable(file: Path, where: str) -> None:
    try:
        with file.open("rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(where, f"{file} does not exist") from None
    except OSError as error:
        raise ConfigError(where, f"cannot read {file}: {error.strerror or error}") from None


def _no_key_password() -> bytes:
    # Without this, OpenSSL would ask for an encrypted key's passphrase on the terminal.
    raise ConfigError(None, "the key is encrypted (passphrase-protected keys are not supported)")


def _tls_context(table: dict[Any, Any], path: Path, notes: list[str]) -> ssl.SSLContext | None:
    if not table:
        return None
    _check_keys(table, TLS_KEYS, path, "tls_server_config.")

    def where(key: str) -> str:
        return file_key(path, f"tls_server_config.{key}")

    for key in ("cert_file", "key_file"):
        if key not in table:
            raise ConfigError(where(key), "missing: cert_file and key_file are both required")
    base = path.parent
    cert_file = _file_path(table["cert_file"], where("cert_file"), base)
    key_file = _file_path(table["key_file"], where("key_file"), base)
    _readable(cert_file, where("cert_file"))
    _readable(key_file, where("key_file"))

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    try:
        # The certificate alone first, so that a file that holds no certificate is named.
        ssl.create_default_context(cafile=str(cert_file))
    except (ssl.SSLError, ValueError) as error:
        raise ConfigError(
            where("cert_file"), f"{cert_file}: not a PEM certificate ({_ssl_reason(error)})"
        ) from None
    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=_no_key_password)
    except ConfigError as error:
        raise ConfigError(where("key_file"), f"{key_file}: {error.problem}") from None
    except (ssl.SSLError, ValueError) as error:
        raise ConfigError(
            where("key_file"),
            f"{key_file}: not a PEM private key matching {cert_file} ({_ssl_reason(error)})",
        ) from None

    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = _string(table.get(key, default), where(key))
        if name not in TLS_VERSIONS:
            raise ConfigError(where(key), f"{name!r} is not one of {', '.join(TLS_VERSIONS)}")
        versions[key] = TLS_VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise ConfigError(where("min_version"), "is above max_version")
    try:
        context.minimum_version = versions["min_version"]
        context.maximum_version = versions["max_version"]
    except ValueError as error:
        raise ConfigError(where("min_version"), f"refused by OpenSSL: {error}") from None

    if "cipher_suites" in table:
        _set_cipher_suites(context, table["cipher_suites"], where("cipher_suites"), notes)
    prefer = table.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise ConfigError(
            where("prefer_server_cipher_suites"), f"expected true or false, got {_kind(prefer)}"
        )
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE

    _set_client_auth(context, table, where, path.parent)
    return context


def _ssl_reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    return str(reason or error).lower().replace("_", " ")


def _set_cipher_suites(
    context: ssl.SSLContext, value: object, where: str, notes: list[str]
) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(where, f"expected a list of cipher suite names, got {_kind(value)}")
    names: list[str] = []
    for item in value:
        if item in TLS13_CIPHER_SUITES:
            notes.append(f"{where}: {item} is a TLS 1.3 suite, which is not configurable: ignored")
            continue
        if item not in CIPHER_SUITES:
            close = difflib.get_close_matches(item, CIPHER_SUITES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                where, f"unknown cipher suite {item!r}{hint}; known: {', '.join(CIPHER_SUITES)}"
            )
        names.append(CIPHER_SUITES[item])
    if not names:
        return  # empty (or only TLS 1.3 names): the defaults, as in the toolkit
    try:
        context.set_ciphers(":".join(names))
    except ssl.SSLError as error:
        raise ConfigError(where, f"refused by OpenSSL: {_ssl_reason(error)}") from None


def _set_client_auth(
    context: ssl.SSLContext, table: dict[Any, Any], where: Callable[[str], str], base: Path
) -> None:
    policy = _string(table.get("client_auth_type", "NoClientCert"), where("client_auth_type"))
    if policy in ("RequestClientCert", "RequireAnyClientCert"):
        raise ConfigError(
            where("client_auth_type"),
            f"{policy} is not supported: it accepts certificates that nobody verified; use "
            "RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file",
        )
    if policy not in CLIENT_AUTH_TYPES:
        raise ConfigError(
            where("client_auth_type"),
            f"{policy!r} is not one of {', '.join(CLIENT_AUTH_TYPES)}",
        )
    if "client_ca_file" in table and "client_ca" in table:
        raise ConfigError(where("client_ca"), "give client_ca_file or client_ca, not both")
    has_ca = "client_ca_file" in table or "client_ca" in table
    if policy == "NoClientCert":
        if has_ca:
            key = "client_ca_file" if "client_ca_file" in table else "client_ca"
            raise ConfigError(
                where(key),
                "a client CA without a client_auth_type that checks it: set client_auth_type "
                "to RequireAndVerifyClientCert",
            )
        return
    if not has_ca:
        raise ConfigError(
            where("client_auth_type"),
            f"{policy} needs client_ca_file (the CA that signs the client certificates)",
        )
    try:
        if "client_ca_file" in table:
            ca_file = _file_path(table["client_ca_file"], where("client_ca_file"), base)
            _readable(ca_file, where("client_ca_file"))
            context.load_verify_locations(cafile=str(ca_file))
        else:
            ca_text = _string(table["client_ca"], where("client_ca"))
            context.load_verify_locations(cadata=ca_text)
    except (ssl.SSLError, ValueError) as error:
        key = "client_ca_file" if "client_ca_file" in table else "client_ca"
        raise ConfigError(where(key), f"no usable CA certificate: {_ssl_reason(error)}") from None
    context.verify_mode = CLIENT_AUTH_TYPES[policy]


# -- basic_auth_users ---------------------------------------------------------------------------


def _users(table: dict[Any, Any], path: Path) -> dict[bytes, bytes]:
    if table:  # checked here, so that a missing bcrypt stops start-up or a reload, not a request
        try:
            import bcrypt  # noqa: PLC0415, F401 - the web extra: only with users
        except ImportError:
            raise _missing(
                "bcrypt", file_key(path, "basic_auth_users"), "checking passwords"
            ) from None
    users: dict[bytes, bytes] = {}
    for name, hashed in table.items():
        where = file_key(path, f"basic_auth_users.{name}")
        if not isinstance(name, str):
            raise ConfigError(
                where, f"a user name must be a string, got {_kind(name)}: quote it in the YAML"
            )
        if ":" in name:
            raise ConfigError(where, "a user name cannot contain ':' (basic auth splits there)")
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ConfigError(where, "a user name cannot contain control characters")
        if not isinstance(hashed, str):
            raise ConfigError(where, f"expected a bcrypt hash (a string), got {_kind(hashed)}")
        match = _BCRYPT_HASH.fullmatch(hashed.encode("ascii", "replace"))
        if match is None:
            raise ConfigError(
                where,
                "not a bcrypt hash (such as $2y$10$ followed by 53 characters: make one with "
                "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
            )
        if not 4 <= int(match.group(1)) <= 31:
            raise ConfigError(where, f"bcrypt cost {int(match.group(1))} is outside 4..31")
        users[name.encode("utf-8")] = hashed.encode("ascii")
    return users


# -- http_server_config -------------------------------------------------------------------------


def _http_server_config(
    table: dict[Any, Any], path: Path, notes: list[str]
) -> tuple[tuple[str, str], ...]:
    _check_keys(table, HTTP_KEYS, path, "http_server_config.")
    if "http2" in table:
        where = file_key(path, "http_server_config.http2")
        if not isinstance(table["http2"], bool):
            raise ConfigError(where, f"expected true or false, got {_kind(table['http2'])}")
        if table["http2"]:
            notes.append(f"{where}: ignored, this server speaks HTTP/1.0 only")
    headers: list[tuple[str, str]] = []
    section = _table(table.get("headers"), file_key(path, "http_server_config.headers"))
    for name, value in section.items():
        where = file_key(path, f"http_server_config.headers.{name}")
        if name not in EXTRA_HEADERS:
            raise ConfigError(
                where,
                f"this header cannot be configured (allowed: {', '.join(EXTRA_HEADERS)})",
            )
        text = _string(value, where) if value is not None else ""
        if not text:
            continue  # "unset if blank", as in the toolkit
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ConfigError(where, "control characters (such as a line break) in the value")
        allowed = EXTRA_HEADERS[name]
        if allowed is not None and text not in allowed:
            raise ConfigError(where, f"{text!r} is not one of {', '.join(allowed)}")
        headers.append((name, text))
    return tuple(headers)
