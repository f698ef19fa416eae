"""Signing in to the dashboard: a browser posts an admin key once and gets a session cookie, a
token that says until when it is good and is signed with a key derived from that admin key. The
gateway so keeps no session state (every replica and worker checks a token alike), a token cannot
be forged or extended without an admin key, and removing an admin key from the configuration ends
every session it opened. The cookie is HttpOnly (no script reads it), SameSite=Strict (no other
site's page sends it) and Secure: a browser sends it over HTTPS, or to localhost."""

import hashlib
import hmac
import time

from fastapi import Request

from .._requests import Access, matching

COOKIE = "bestroute_session"
SESSION_S = 12 * 3600


def _signature(key: bytes, expires: int) -> bytes:
    signing_key = hashlib.sha256(b"bestroute dashboard session\x00" + key).digest()
    return hmac.new(signing_key, str(expires).encode(), hashlib.sha256).hexdigest().encode()


def session_token(key: bytes, *, now: float | None = None) -> str:
    """A token good for SESSION_S from ``now``, signed for the admin key ``key``."""
    expires = int(now if now is not None else time.time()) + SESSION_S
    return f"{expires}.{_signature(key, expires).decode()}"


def token_valid(token: str, admin_keys: list[bytes], *, now: float | None = None) -> bool:
    """Whether ``token`` is unexpired and signed for one of ``admin_keys``."""
    expires_text, _, signature = token.partition(".")
    if not (expires_text.isascii() and expires_text.isdigit()) or len(expires_text) > 12:  # "²" is a digit
        return False
    expires = int(expires_text)
    if expires <= (now if now is not None else time.time()):
        return False
    return matching(signature.encode(), [_signature(key, expires) for key in admin_keys]) is not None


def signed_in(request: Request, access: Access) -> bool:
    """Whether ``request`` may see the dashboard: an admin key as its bearer token, a valid
    session cookie, or a gateway that needs no admin key."""
    if access.admits(request):
        return True
    assert access.admin_keys is not None  # admits() is True without keys
    return token_valid(request.cookies.get(COOKIE, ""), access.admin_keys)
