"""Basic authentication at request time: the server's authentication hook for a set of users.

bcrypt is slow on purpose (~50 ms at cost 10), so, as exporter-toolkit does, a check that
succeeded is remembered (VerifiedPasswords, shared by the BasicAuth of every configuration the
server goes through, so a reload does not cost a bcrypt per user), and bcrypt runs one at a time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping

VERIFIED_CACHE_SIZE = 256  # (user, hash, password) triples that passed bcrypt, remembered


class VerifiedPasswords:
    """The checks that succeeded, keyed by (user, hash, password) — the password as an HMAC under
    a key made at start-up, never in clear — at most `capacity`, least recently used first out.

    Only successes are remembered: filling the cache takes a valid password, so whoever has none
    cannot evict Prometheus's entry.
    """

    def __init__(self, capacity: int = VERIFIED_CACHE_SIZE) -> None:
        self._capacity = capacity
        self._secret = os.urandom(32)
        self._digests: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self.bcrypt_lock = threading.Lock()  # bcrypt one at a time
        self.bcrypt_runs = 0  # for tests and curiosity: how often bcrypt actually ran

    def digest(self, user: bytes, hashed: bytes, password: bytes) -> bytes:
        return hmac.new(
            self._secret,
            b"%d:%b%d:%b%b" % (len(user), user, len(hashed), hashed, password),
            hashlib.sha256,
        ).digest()

    def recall(self, digest: bytes) -> bool:
        with self._lock:
            if digest in self._digests:
                self._digests.move_to_end(digest)
                return True
            return False

    def remember(self, digest: bytes) -> None:
        with self._lock:
            self._digests[digest] = None
            while len(self._digests) > self._capacity:
                self._digests.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._digests)

    def __iter__(self) -> Iterator[bytes]:
        """The digests held (for tests: none is a password)."""
        with self._lock:
            return iter(list(self._digests))


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against `users` (user name -> bcrypt hash, both
    bytes). An unknown user costs a bcrypt like a known one (checked against a configured hash,
    then refused), so timing does not tell which user names exist. No users: everything is
    allowed."""

    def __init__(
        self,
        users: Mapping[bytes, bytes],
        realm: str,
        verified: VerifiedPasswords | None = None,
    ) -> None:
        self.users = users
        self.realm = realm
        self.verified = verified if verified is not None else VerifiedPasswords()

    def allows(self, authorization: str | None) -> bool:
        """Whether `authorization` (the header's value, or None) names a user with the right
        password."""
        if not self.users:
            return True
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        known = hashed is not None
        if hashed is None:
            hashed = next(iter(self.users.values()))  # same cost as a real check, then refused
        digest = self.verified.digest(user, hashed, password)
        if known and self.verified.recall(digest):
            return True
        with self.verified.bcrypt_lock:
            self.verified.bcrypt_runs += 1
            import bcrypt  # noqa: PLC0415 - present: load_web_config checked it for users

            try:
                matches = bcrypt.checkpw(password, hashed)
            except ValueError:  # a NUL byte in the password: bcrypt cannot take it
                matches = False
        if not (known and matches):
            return False
        self.verified.remember(digest)
        return True

    def challenge(self) -> str:
        """The WWW-Authenticate value sent with every 401."""
        return f'Basic realm="{self.realm}"'


def _basic_credentials(authorization: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an ``Authorization: Basic <base64>`` value; None if it is not one.

    http.client hands headers over as latin-1 text, so encoding back gives the bytes sent."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip().encode("latin-1"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password
