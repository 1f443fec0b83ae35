"""Who may use the server: the rule that keeps a token-less server on loopback, and the token check."""
from __future__ import annotations

import hmac
import ipaddress


def refuse_without_token(host: str, token: str | None) -> str:
    """Why the server must not start on ``host`` (anything but loopback without a token), or ''."""
    if token or host == "localhost":
        return ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return ""
    except ValueError:
        pass
    return (f"binding {host} (not loopback) needs a token: pass --token T or set LSTMINFER_TOKEN, so that every "
            "request must carry 'Authorization: Bearer T'")


def bearer_matches(authorization: bytes, expected: bytes) -> bool:
    """``Authorization`` equals ``Bearer <token>``, compared in constant time."""
    return hmac.compare_digest(authorization, expected)
