"""web/auth.py: basic authentication at request time and its cache of successes."""

from __future__ import annotations

import base64

import pytest

from tests.support.http import basic, bcrypt_hash
from xdp_ip_counter.routes import REALM
from xdp_ip_counter.web.auth import BasicAuth, VerifiedPasswords


@pytest.fixture(scope="module")
def users() -> dict[bytes, bytes]:
    return {
        b"alice": bcrypt_hash("correct horse").encode(),
        b"bob": bcrypt_hash("", b"$2y$").encode(),  # an empty password is still a password
        "jos\u00e9".encode(): bcrypt_hash("\u00fcml\u00e4ut").encode(),
    }


@pytest.mark.parametrize(
    ("authorization", "allowed"),
    [
        (basic("alice", "correct horse"), True),
        (basic("bob", ""), True),
        (basic("jos\u00e9", "\u00fcml\u00e4ut"), True),
        ("basic " + basic("alice", "correct horse")[6:], True),  # the scheme is case-insensitive
        (basic("alice", "correct horse "), False),
        (basic("alice", "Correct horse"), False),
        (basic("Alice", "correct horse"), False),
        (basic("mallory", "correct horse"), False),
        (basic("alice", b"correct horse\x00"), False),  # bcrypt refuses NUL: a refusal, no error
        (basic("", ""), False),
        (None, False),
        ("", False),
        ("Basic", False),
        ("Basic !!!!", False),
        ("Basic " + base64.b64encode(b"alice correct horse").decode(), False),  # no colon
        ("Bearer " + base64.b64encode(b"alice:correct horse").decode(), False),
        ("Basic " + basic("alice", "correct horse")[6:] + "\u00e9", False),
    ],
)
def test_basic_auth_decisions(
    users: dict[bytes, bytes], authorization: str | None, allowed: bool
) -> None:
    assert BasicAuth(users, REALM).allows(authorization) is allowed


def test_no_users_means_no_authentication() -> None:
    assert BasicAuth({}, REALM).allows(None) is True


def test_successes_are_remembered_failures_are_not(users: dict[bytes, bytes]) -> None:
    auth = BasicAuth(users, REALM)
    for _ in range(5):
        assert auth.allows(basic("alice", "correct horse"))
    assert auth.verified.bcrypt_runs == 1
    for _ in range(3):
        assert not auth.allows(basic("alice", "wrong"))
    assert auth.verified.bcrypt_runs == 4
    # An unknown user costs a bcrypt too: its timing does not tell it from a known one.
    assert not auth.allows(basic("mallory", "correct horse"))
    assert auth.verified.bcrypt_runs == 5
    # Nothing in the cache holds a password in clear.
    assert all(b"correct horse" not in digest for digest in auth.verified)


def test_a_changed_hash_is_not_served_from_the_cache(users: dict[bytes, bytes]) -> None:
    auth = BasicAuth(users, REALM)
    assert auth.allows(basic("alice", "correct horse"))
    changed = {**users, b"alice": bcrypt_hash("new password").encode()}
    reloaded = BasicAuth(changed, REALM, auth.verified)  # a reload shares the cache
    assert not reloaded.allows(basic("alice", "correct horse"))
    assert reloaded.allows(basic("alice", "new password"))
    assert auth.verified.bcrypt_runs == 3


def test_the_cache_is_bounded(users: dict[bytes, bytes]) -> None:
    auth = BasicAuth(users, REALM, VerifiedPasswords(capacity=2))
    credentials = [
        basic("alice", "correct horse"),
        basic("bob", ""),
        basic("jos\u00e9", "\u00fcml\u00e4ut"),
    ]
    for authorization in credentials:
        assert auth.allows(authorization)
    assert len(auth.verified) == 2
    assert auth.verified.bcrypt_runs == 3
    assert auth.allows(credentials[2])  # the most recent: remembered
    assert auth.verified.bcrypt_runs == 3
    assert auth.allows(credentials[0])  # the oldest: forgotten, checked again
    assert auth.verified.bcrypt_runs == 4


def test_challenge() -> None:
    assert BasicAuth({}, REALM).challenge() == 'Basic realm="xdp-ip-counter"'
