"""web/config.py: the exporter-toolkit web configuration file, the flag and key that name the
file, and what a reload does with it.

Certificates are made at test time with the openssl command line (tests/support/http.py's
`make_pki`); bcrypt hashes with the lowest cost (4), to keep the tests fast.
"""

from __future__ import annotations

import http.client
import logging
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.http import (
    PKI,
    basic,
    bcrypt_hash,
    make_pki,
    openssl,
    sample_view,
    tls_section,
    write_web_config,
)
from tests.support.python import run_python
from xdp_ip_counter.cli import settings_from_args
from xdp_ip_counter.config import ConfigError, Settings, diff, needs_restart
from xdp_ip_counter.daemon import Daemon
from xdp_ip_counter.metrics import Exposition
from xdp_ip_counter.routes import MetricsServer
from xdp_ip_counter.web.config import NO_WEB_CONFIG, load_web_config


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- loading: what is accepted ------------------------------------------------------------------


def test_an_empty_file_turns_nothing_on(tmp_path: Path) -> None:
    web = load_web_config(write_web_config(tmp_path, "# nothing yet\n"))
    assert web.tls is None
    assert dict(web.users) == {}
    assert web.headers == ()
    assert web.notes == ()
    assert web.describe() == f"{tmp_path}/web.yml: plain HTTP (no TLS); no authentication"


def test_empty_sections_turn_nothing_on(tmp_path: Path) -> None:
    text = "tls_server_config:\nbasic_auth_users: {}\nhttp_server_config:\n"
    web = load_web_config(write_web_config(tmp_path, text))
    assert (web.tls, dict(web.users), web.headers) == (None, {}, ())


def test_tls_with_the_defaults(tmp_path: Path, pki: PKI) -> None:
    web = load_web_config(write_web_config(tmp_path, tls_section(pki)))
    assert isinstance(web.tls, ssl.SSLContext)
    assert web.tls.minimum_version == ssl.TLSVersion.TLSv1_2
    assert web.tls.maximum_version == ssl.TLSVersion.TLSv1_3
    assert web.tls.verify_mode == ssl.CERT_NONE
    assert web.tls.options & ssl.OP_NO_RENEGOTIATION
    assert web.tls.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert web.describe() == f"{tmp_path}/web.yml: TLS; no authentication"


def test_relative_paths_are_relative_to_the_file(
    tmp_path: Path, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "tls_server_config:\n  cert_file: server.crt\n  key_file: ./server.key\n"
    path = write_web_config(pki.directory, text, "relative.yml")
    monkeypatch.chdir(tmp_path)  # not the file's directory
    assert load_web_config(path).tls is not None


def test_every_supported_key(tmp_path: Path, pki: PKI) -> None:
    alice, bob = bcrypt_hash("alice-pw", b"$2y$"), bcrypt_hash("bob-pw", b"$2a$")
    text = tls_section(
        pki,
        f"  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {pki.client_ca}\n"
        "  min_version: TLS13\n"
        "  max_version: TLS13\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n"
        "  prefer_server_cipher_suites: false\n",
    )
    text += (
        "http_server_config:\n  http2: true\n  headers:\n"
        "    X-Frame-Options: deny\n    Content-Security-Policy: default-src 'none'\n"
        "    Strict-Transport-Security: ''\n"
        f"basic_auth_users:\n  alice: '{alice}'\n  \"bob smith\": '{bob}'\n"
    )
    web = load_web_config(write_web_config(tmp_path, text))
    assert web.tls is not None
    assert web.tls.verify_mode == ssl.CERT_REQUIRED
    assert web.tls.minimum_version == web.tls.maximum_version == ssl.TLSVersion.TLSv1_3
    assert not web.tls.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = [c["name"] for c in web.tls.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-ECDSA-AES128-GCM-SHA256"]
    assert dict(web.users) == {b"alice": alice.encode(), b"bob smith": bob.encode()}
    # A blank header is unset, as in the toolkit.
    assert web.headers == (
        ("X-Frame-Options", "deny"),
        ("Content-Security-Policy", "default-src 'none'"),
    )
    where = f"{tmp_path}/web.yml"
    assert web.notes == (
        f"{where}: key 'tls_server_config.cipher_suites': TLS_AES_128_GCM_SHA256 is a TLS 1.3 "
        "suite, which is not configurable: ignored",
        f"{where}: key 'http_server_config.http2': ignored, this server speaks HTTP/1.0 only",
    )
    assert web.describe() == (
        f"{where}: TLS; basic auth for 2 users; headers X-Frame-Options, Content-Security-Policy"
    )


def test_inline_client_ca(tmp_path: Path, pki: PKI) -> None:
    ca_text = "".join(f"    {line}\n" for line in pki.client_ca.read_text().splitlines())
    text = tls_section(
        pki, f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca: |\n{ca_text}"
    )
    web = load_web_config(write_web_config(tmp_path, text))
    assert web.tls is not None
    assert web.tls.verify_mode == ssl.CERT_OPTIONAL


def test_users_without_tls_get_a_note(tmp_path: Path) -> None:
    path = write_web_config(tmp_path, f"basic_auth_users:\n  u: '{bcrypt_hash('p')}'\n")
    web = load_web_config(path)
    assert web.notes == (
        f"{path}: basic_auth_users without tls_server_config: passwords cross the network in "
        "clear text; add a certificate or keep the listen address on loopback",
    )


# -- loading: what is refused, and how it is said ---------------------------------------------

GOOD_HASH = "$2b$04$" + "a" * 53


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("- a list\n", None, "expected a mapping, got a list (['a list'])"),
        ("tls_config: {}\n", "tls_config", "unknown key (did you mean 'tls_server_config'? "
         "known keys: tls_server_config, http_server_config, basic_auth_users)"),
        ("rate_limit: {burst: 1}\n", "rate_limit", "not supported by xdp-ip-counter "
         "(connections and /list renders are limited instead; see the README)"),
        ("tls_server_config: [1]\n", "tls_server_config", "expected a mapping, got a list ([1])"),
        ("tls_server_config: {cert: x}\n", "tls_server_config.cert",
         "inline certificates are not supported: use cert_file"),
        ("tls_server_config: {key: x}\n", "tls_server_config.key",
         "inline keys are not supported: use key_file"),
        ("tls_server_config: {client_allowed_sans: [a]}\n",
         "tls_server_config.client_allowed_sans",
         "not supported by xdp-ip-counter: use a client CA that signs only the clients you allow"),
        ("tls_server_config: {curve_preferences: [X25519]}\n",
         "tls_server_config.curve_preferences", "not supported (Python's ssl module cannot set a "
         "list of curves): OpenSSL's defaults are used"),
        ("tls_server_config: {cert_file: a.crt}\n", "tls_server_config.key_file",
         "missing: cert_file and key_file are both required"),
        ("tls_server_config: {key_file: a.key}\n", "tls_server_config.cert_file",
         "missing: cert_file and key_file are both required"),
        ("tls_server_config: {cert_file: '', key_file: a}\n", "tls_server_config.cert_file",
         "empty file name"),
        ("tls_server_config: {cert_file: 7, key_file: a}\n", "tls_server_config.cert_file",
         "expected a string, got an integer (7)"),
        ("basic_auth_users: {alice: secret}\n", "basic_auth_users.alice",
         "not a bcrypt hash (such as $2y$10$ followed by 53 characters: make one with "
         "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"),
        ("basic_auth_users: {alice: '$2b$03$" + "a" * 53 + "'}\n", "basic_auth_users.alice",
         "bcrypt cost 3 is outside 4..31"),
        ("basic_auth_users: {alice: '$2x$04$" + "a" * 53 + "'}\n", "basic_auth_users.alice",
         "not a bcrypt hash (such as $2y$10$ followed by 53 characters: make one with "
         "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"),
        ("basic_auth_users: {alice: 12}\n", "basic_auth_users.alice",
         "expected a bcrypt hash (a string), got an integer (12)"),
        (f"basic_auth_users: {{1234: '{GOOD_HASH}'}}\n", "basic_auth_users.1234",
         "a user name must be a string, got an integer (1234): quote it in the YAML"),
        (f"basic_auth_users: {{'a:b': '{GOOD_HASH}'}}\n", "basic_auth_users.a:b",
         "a user name cannot contain ':' (basic auth splits there)"),
        (f"basic_auth_users: {{\"a\\tb\": '{GOOD_HASH}'}}\n", "basic_auth_users.a\tb",
         "a user name cannot contain control characters"),
        ("http_server_config: {http2: maybe}\n", "http_server_config.http2",
         "expected true or false, got a string ('maybe')"),
        ("http_server_config: {compression: true}\n", "http_server_config.compression",
         "unknown key (known keys: headers, http2)"),
        ("http_server_config: {headers: {Server: x}}\n", "http_server_config.headers.Server",
         "this header cannot be configured (allowed: Strict-Transport-Security, "
         "X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, Content-Security-Policy)"),
        ("http_server_config: {headers: {X-Frame-Options: allow}}\n",
         "http_server_config.headers.X-Frame-Options", "'allow' is not one of deny, sameorigin"),
        ("http_server_config: {headers: {X-Content-Type-Options: sniff}}\n",
         "http_server_config.headers.X-Content-Type-Options", "'sniff' is not one of nosniff"),
        ("http_server_config: {headers: {Content-Security-Policy: \"a\\r\\nSet-Cookie: x\"}}\n",
         "http_server_config.headers.Content-Security-Policy",
         "control characters (such as a line break) in the value"),
    ],
)  # fmt: skip
def test_bad_files_name_the_key(tmp_path: Path, text: str, key: str | None, problem: str) -> None:
    path = write_web_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    where = f"{path}: key '{key}'" if key else str(path)
    assert str(caught.value) == f"{where}: {problem}"


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ("  min_version: TLS14\n", "min_version",
         "'TLS14' is not one of TLS10, TLS11, TLS12, TLS13"),
        ("  max_version: 1.2\n", "max_version", "expected a string, got a number (1.2)"),
        ("  min_version: TLS13\n  max_version: TLS12\n", "min_version", "is above max_version"),
        ("  cipher_suites: TLS_RSA_WITH_AES_128_CBC_SHA\n", "cipher_suites",
         "expected a list of cipher suite names, got a string ('TLS_RSA_WITH_AES_128_CBC_SHA')"),
        ("  prefer_server_cipher_suites: 1\n", "prefer_server_cipher_suites",
         "expected true or false, got an integer (1)"),
        ("  client_auth_type: RequireAnyClientCert\n", "client_auth_type",
         "RequireAnyClientCert is not supported: it accepts certificates that nobody verified; "
         "use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file"),
        ("  client_auth_type: RequestClientCert\n", "client_auth_type",
         "RequestClientCert is not supported: it accepts certificates that nobody verified; "
         "use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file"),
        ("  client_auth_type: Always\n", "client_auth_type", "'Always' is not one of "
         "NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"),
        ("  client_auth_type: RequireAndVerifyClientCert\n", "client_auth_type",
         "RequireAndVerifyClientCert needs client_ca_file (the CA that signs the client "
         "certificates)"),
        ("  client_ca_file: {ca}\n", "client_ca_file", "a client CA without a client_auth_type "
         "that checks it: set client_auth_type to RequireAndVerifyClientCert"),
        ("  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {ca}\n  client_ca: x\n",
         "client_ca", "give client_ca_file or client_ca, not both"),
        ("  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {key}\n",
         "client_ca_file", "no usable CA certificate: no certificate or crl found"),
        ("  client_auth_type: VerifyClientCertIfGiven\n  client_ca: not a certificate\n",
         "client_ca", "no usable CA certificate: "),
    ],
)  # fmt: skip
def test_bad_tls_settings_name_the_key(
    tmp_path: Path, pki: PKI, extra: str, key: str, problem: str
) -> None:
    extra = extra.format(ca=pki.client_ca, key=pki.server_key)
    path = write_web_config(tmp_path, tls_section(pki, extra))
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert str(caught.value).startswith(f"{path}: key 'tls_server_config.{key}': {problem}")


def test_unknown_cipher_suite_suggests_the_closest(tmp_path: Path, pki: PKI) -> None:
    extra = "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA265]\n"
    path = write_web_config(tmp_path, tls_section(pki, extra))
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert str(caught.value).startswith(
        f"{path}: key 'tls_server_config.cipher_suites': unknown cipher suite "
        "'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA265' (did you mean "
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256?); known: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
    )


def test_certificate_and_key_problems_name_the_file(tmp_path: Path, pki: PKI) -> None:
    encrypted = tmp_path / "encrypted.key"
    openssl(
        "pkey", "-in", str(pki.server_key), "-aes256", "-passout", "pass:x",
        "-out", str(encrypted), cwd=tmp_path,
    )  # fmt: skip
    cases = [
        (f"{tmp_path}/absent.crt", pki.server_key, "cert_file",
         f"{tmp_path}/absent.crt does not exist"),
        (pki.server_cert, f"{tmp_path}/absent.key", "key_file",
         f"{tmp_path}/absent.key does not exist"),
        (pki.server_key, pki.server_key, "cert_file",
         f"{pki.server_key}: not a PEM certificate (no certificate or crl found)"),
        (pki.server_cert, pki.directory / "test-ca.key", "key_file",
         f"{pki.directory}/test-ca.key: not a PEM private key matching {pki.server_cert} "
         "(key values mismatch)"),
        (pki.server_cert, encrypted, "key_file",
         f"{encrypted}: the key is encrypted (passphrase-protected keys are not supported)"),
    ]  # fmt: skip
    for cert, key, blamed, problem in cases:
        path = write_web_config(
            tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        )
        with pytest.raises(ConfigError) as caught:
            load_web_config(path)
        assert str(caught.value) == f"{path}: key 'tls_server_config.{blamed}': {problem}"


def test_unreadable_key_file_is_named(tmp_path: Path, pki: PKI) -> None:
    key = tmp_path / "a-directory.key"  # unreadable even for root
    key.mkdir()
    path = write_web_config(
        tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {key}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert str(caught.value) == (
        f"{path}: key 'tls_server_config.key_file': cannot read {key}: Is a directory"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"basic_auth_users:\n  alice: x\n  alice: y\n",
         "invalid YAML at line 3, column 3: found the key 'alice' twice"),
        (b"basic_auth_users: [unclosed\n",
         "invalid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
        (b"tls_server_config: {a: 1}}\n",
         "invalid YAML at line 1, column 26: expected <block end>, but found '}'"),
        (b"basic_auth_users:\n  caf\xe9: x\n", "not UTF-8 text (byte 23)"),
        (b"#" * (1 << 20) + b"\n", "larger than 1048576 bytes: not a web configuration"),
    ],
)  # fmt: skip
def test_unreadable_yaml_is_refused(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "web.yml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert str(caught.value) == f"{path}: {problem}"


def test_a_missing_file_says_who_named_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_web_config(tmp_path / "absent.yml", "argument --web.config.file")
    assert str(caught.value) == (
        f"{tmp_path}/absent.yml: web configuration file does not exist "
        "(named by argument --web.config.file)"
    )


# -- the flag and the key ------------------------------------------------------------------------


def test_flag_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    web = write_web_config(tmp_path, "")
    absent = tmp_path / "absent.toml"
    monkeypatch.chdir(tmp_path)
    settings = settings_from_args(["--web.config.file", "web.yml"], default_config=absent)
    assert settings.web_config_file == str(web)  # made absolute: a reload may run elsewhere
    config = tmp_path / "config.toml"
    config.write_text(f'web_config_file = "{web}"\n')
    assert settings_from_args(["-c", str(config)], absent).web_config_file == str(web)
    config.write_text('web_config_file = ""\n')
    assert settings_from_args(["-c", str(config)], absent).web_config_file == ""
    assert Settings().web_config_file == ""


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"web.yml"', "must be an absolute path (or empty for none), got 'web.yml'"),
        ("true", "expected a string, got a boolean (True)"),
    ],
)
def test_bad_key(tmp_path: Path, value: str, problem: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"web_config_file = {value}\n")
    with pytest.raises(ConfigError) as caught:
        settings_from_args(["-c", str(config)], tmp_path / "absent.toml")
    assert str(caught.value) == f"{config}: key 'web_config_file': {problem}"


def test_a_bad_web_config_fails_the_settings(tmp_path: Path) -> None:
    web = write_web_config(tmp_path, "basic_auth_users: {alice: x}\n")
    config = tmp_path / "config.toml"
    config.write_text(f'web_config_file = "{web}"\n')
    with pytest.raises(ConfigError, match=rf"^{web}: key 'basic_auth_users.alice': not a bcrypt"):
        settings_from_args(["-c", str(config)], tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as caught:
        settings_from_args(["--web.config.file", str(tmp_path / "nope.yml")], config)
    assert str(caught.value) == (
        f"{tmp_path}/nope.yml: web configuration file does not exist "
        "(named by argument --web.config.file)"
    )


def run_check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "xdp_ip_counter", "--check-config", "-i", "lo", *args)


def test_check_config_with_a_web_config(tmp_path: Path, pki: PKI) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    good = write_web_config(tmp_path, tls_section(pki), "good.yml")
    result = run_check_config("-c", str(config), "--web.config.file", str(good))
    assert result.returncode == 0, result.stderr
    assert f"web config file {good};" in result.stdout

    bad = write_web_config(tmp_path, tls_section(pki, "  min_version: SSL3\n"), "bad.yml")
    result = run_check_config("-c", str(config), "--web.config.file", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"xdp-ip-counter: error: {bad}: key 'tls_server_config.min_version': 'SSL3' is not one "
        "of TLS10, TLS11, TLS12, TLS13\n"
    )


# -- reload --------------------------------------------------------------------------------------


@dataclass
class ReloadRig:
    daemon: Daemon
    server: MetricsServer
    web_file: Path
    settings: Settings
    reloaded: list[Settings]  # what the next reload reads: the last item

    def status(self, authorization: str | None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            headers = {"Authorization": authorization} if authorization else {}
            connection.request("GET", "/metrics", headers=headers)
            return connection.getresponse().status
        finally:
            connection.close()


@pytest.fixture
def reload_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReloadRig]:
    """A Daemon with a real HTTP server and no data path (a reload that changes nothing but
    the web configuration never touches it)."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    web_file = write_web_config(tmp_path, f"basic_auth_users:\n  alice: '{bcrypt_hash('one')}'\n")
    settings = Settings(interfaces=("lo",), web_config_file=str(web_file))
    # The reload re-reads the file itself (cli's check is tested above): Settings as they are.
    reloaded = [settings]
    server = MetricsServer.bind(
        "127.0.0.1", 0, sample_view, Exposition(False), web_config=load_web_config(web_file)
    )
    daemon = Daemon(
        settings,
        lambda: reloaded[-1],
        datapath=object(),  # type: ignore[arg-type]
        server=server,
    )
    server.start()
    saved = signal.getsignal(signal.SIGHUP)
    try:
        yield ReloadRig(daemon, server, web_file, settings, reloaded)
    finally:
        signal.signal(signal.SIGHUP, saved)
        server.close()


def test_reload_reads_the_web_config_again(reload_rig: ReloadRig) -> None:
    rig = reload_rig
    assert rig.status(basic("alice", "one")) == 200
    rig.web_file.write_text(f"basic_auth_users:\n  alice: '{bcrypt_hash('two')}'\n")
    rig.daemon.reload()
    assert rig.daemon.reload_successful
    assert rig.status(basic("alice", "one")) == 401
    assert rig.status(basic("alice", "two")) == 200


def test_a_bad_web_config_on_reload_keeps_the_old_one(
    reload_rig: ReloadRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = reload_rig
    before = rig.server.web_config
    rig.web_file.write_text("basic_auth_users:\n  alice: plain-text-password\n")
    rig.daemon.reload()
    assert not rig.daemon.reload_successful
    assert rig.server.web_config is before
    assert rig.status(basic("alice", "one")) == 200
    assert rig.status(None) == 401
    rejected = [r.getMessage() for r in caplog.records if "reload rejected" in r.getMessage()]
    assert len(rejected) == 1
    assert f"{rig.web_file}: key 'basic_auth_users.alice': not a bcrypt hash" in rejected[0]


def test_reload_to_no_web_config(reload_rig: ReloadRig, tmp_path: Path) -> None:
    rig = reload_rig
    rig.reloaded.append(Settings(interfaces=("lo",)))
    rig.daemon.reload()
    assert rig.server.web_config is NO_WEB_CONFIG
    assert rig.status(None) == 200


def test_reload_is_concurrent_with_requests(reload_rig: ReloadRig) -> None:
    """Connections in progress keep the configuration they started with; none fails."""
    rig = reload_rig
    statuses: list[int] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            statuses.append(rig.status(basic("alice", "one")))

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        for _ in range(5):
            rig.daemon.reload()  # the same file: the same user and password
    finally:
        stop.set()
        thread.join(timeout=10)
    assert statuses
    assert set(statuses) == {200}


def test_a_reload_says_what_changed(tmp_path: Path) -> None:
    before, after = Settings(), Settings(web_config_file="/etc/xdp-ip-counter/web.yml")
    assert diff(before, after) == ["web_config_file: none -> /etc/xdp-ip-counter/web.yml"]
    assert needs_restart(before, after) == []  # applied by a reload


def test_a_reload_logs_that_the_web_config_was_read(
    reload_rig: ReloadRig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="xdp_ip_counter"):
        reload_rig.daemon.reload()
    messages = [r.getMessage() for r in caplog.records]
    path = reload_rig.web_file
    assert f"web configuration {path}: plain HTTP (no TLS); basic auth for 1 user" in messages
    assert f"reloaded: web configuration {path} re-read" in messages
