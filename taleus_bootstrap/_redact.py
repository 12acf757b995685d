"""Scrubbing secrets from text that leaves the process: audit events, log records, ``/status``.

A session knows some secrets: the token (the inviter reads it in ``contact``, the invitee has it
in its link) and whatever password a provision's endpoint or ``credentials_ref`` carries (a
libpq URI's ``user:password@``, a ``password=`` setting). A hook's exception message, a
validation error quoting a hook's result or a crash's traceback may embed any of them, raw or
encoded. :class:`Secrets` replaces every occurrence of each, and of its encodings (base64 and
base64url at each of the three byte alignments, so a token inside an encoded link is found too;
hex; URL-quoted), with :data:`REDACTED`, and bounds the rest (:meth:`Secrets.scrub`).

Whatever the session does not know is scrubbed by shape (:func:`scrub_patterns`, also applied
by :meth:`Secrets.scrub`): the password of any ``scheme://user:password@`` URL and the value of
any ``password=`` / ``passwd=`` / ``pwd=`` / ``secret=`` setting. Values shorter than
:data:`MIN_SECRET_CHARS` are scrubbed only by shape (replacing every ``"ab"`` would garble the
text and hide nothing).
"""

from __future__ import annotations

import base64
import re
import traceback
from collections.abc import Iterable, Iterator
from typing import Final
from urllib.parse import quote, quote_plus, unquote, urlsplit

from ._frames import Provision

__all__ = ["MIN_SECRET_CHARS", "REDACTED", "Secrets", "format_exception", "scrub_patterns"]

REDACTED: Final = "[redacted]"
MIN_SECRET_CHARS: Final = 4
_URL_PASSWORD: Final = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)([^\s@/]+)(@)")
_SETTING: Final = re.compile(
    r"""(?i)(\b(?:password|passwd|pwd|secret)\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&)'"]+)"""
)
_QUOTED_SETTING: Final = re.compile(
    r"""(?i)(["'](?:password|passwd|pwd|secret)["']\s*:\s*)("[^"]*"|'[^']*')"""
)


def scrub_patterns(text: str) -> str:
    """``text`` with every password-shaped value (URL userinfo, ``password=`` settings)
    replaced by :data:`REDACTED`."""
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}\3", text)
    text = _QUOTED_SETTING.sub(rf"\1{REDACTED}", text)
    return _SETTING.sub(rf"\1{REDACTED}", text)


def _base64_cores(raw: bytes) -> Iterator[bytes]:
    """The base64 characters that encode ``raw`` alone, at each of the three alignments it
    can have inside a longer encoded text (the characters shared with neighbours dropped)."""
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).rstrip(b"=")
        start = -(-8 * shift // 6)  # the first character with no bit of the prefix
        end = 8 * (shift + len(raw)) // 6  # the last character whose bits are all raw's
        yield encoded[start:end]


def _encodings(secret: str) -> Iterator[str]:
    raw = secret.encode()
    yield secret
    yield quote(secret, safe="")
    yield quote_plus(secret)
    yield raw.hex()
    yield raw.hex().upper()
    for core in _base64_cores(raw):
        yield core.decode("ascii")
        yield core.translate(bytes.maketrans(b"+/", b"-_")).decode("ascii")


def _provision_passwords(provision: Provision) -> Iterator[str]:
    """The passwords a provision's endpoint or credentials reference carries, if any."""
    database = provision.database
    try:
        password = urlsplit(database.endpoint).password
    except ValueError:
        password = None
    if password:
        yield unquote(password)
    for text in (database.endpoint, database.credentials_ref):
        for match in _SETTING.finditer(text):
            yield match.group(2).strip("'\"")


class Secrets:
    """The secrets one session knows, and :meth:`scrub` to keep them out of text it lets go."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._secrets: set[str] = set()
        self._provisions: list[Provision] = []  # whose passwords are not yet in _secrets
        self._pattern: re.Pattern[str] | None = None
        self._stale = False

    def add(self, secrets: Iterable[str]) -> None:
        """Know these secret values (and so their encodings) from now on. Cheap: the encodings
        and the pattern are made only when some text is scrubbed (most sessions never are:
        making them cost about 0.36 ms per session)."""
        for secret in secrets:
            if len(secret) >= MIN_SECRET_CHARS and secret not in self._secrets:
                self._secrets.add(secret)
                self._stale = True

    def _compiled(self) -> re.Pattern[str] | None:
        while self._provisions:
            self.add(_provision_passwords(self._provisions.pop()))
        if self._stale:
            forms = {
                form
                for secret in self._secrets
                for form in _encodings(secret)
                if len(form) >= MIN_SECRET_CHARS
            }
            longest_first = sorted(forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, longest_first)))
            self._stale = False
        return self._pattern

    def add_token(self, token: str, *, link_text: str | None = None) -> None:
        """Know a token (and the text of the link that carries it)."""
        self.add([token] if link_text is None else [token, link_text])

    def add_provision(self, provision: Provision) -> None:
        """Know the passwords a provision carries (looked for only when some text is scrubbed,
        as the encodings are: about 4 us per session otherwise)."""
        self._provisions.append(provision)

    def scrub(self, text: str, *, limit: int | None = None) -> str:
        """``text`` without any known secret or password-shaped value, cut to ``limit``
        characters (the session's, by default)."""
        pattern = self._compiled()
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return scrub_patterns(text)[: self.limit if limit is None else limit]

    def scrub_exception(self, error: BaseException) -> str:
        """``error``'s traceback (with its causes), scrubbed, for a log record."""
        return self.scrub(format_exception(error), limit=16 * self.limit)


def format_exception(error: BaseException) -> str:
    """``error``'s traceback, with its chained causes, as one text."""
    return "".join(traceback.format_exception(error)).rstrip()
