"""Twilio: `X-Twilio-Signature: <base64 HMAC-SHA1>` keyed by the auth token.

Signed bytes: the full URL Twilio called, then each POST form parameter as name + value,
sorted by name (duplicates once, values sorted), as Twilio's helper libraries do. A JSON
body is not form data: Twilio then adds `bodySHA256=<hex sha256 of the body>` to the URL's
query string and signs the URL alone, so the body is checked against that hash.

Twilio's libraries accept the URL with or without its port (Twilio has signed both ways),
so both spellings are tried. `spec.public_url` replaces the URL the gateway saw when a proxy
rewrites it; the request's own query string is kept, since Twilio signed it.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl

from data_plane.verify._common import encode_secrets, from_b64, header, keyed, match
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Twilio

_HEADER = "x-twilio-signature"
_DISPLAY = "X-Twilio-Signature"
_BODY_HASH = "bodySHA256"
_DEFAULT_PORTS = {"https": "443", "http": "80"}


def build(spec: Twilio) -> Verifier:
    keys = keyed(encode_secrets(spec.secret), spec.algorithm)
    public_url = spec.public_url

    def verify(inbound: Inbound) -> Answer | None:
        received = from_b64(header(inbound.headers, _HEADER, _DISPLAY).strip())
        if received is None:
            raise VerifyFailed(f"malformed header {_DISPLAY}")
        url = inbound.url if public_url is None else _with_query(public_url, inbound.url)
        query = url.partition("?")[2]
        body_hash = _query_value(query, _BODY_HASH) if _BODY_HASH in query else None
        if body_hash is not None:
            actual = hashlib.sha256(inbound.body).hexdigest().encode()
            if not hmac.compare_digest(actual, body_hash.lower().encode(errors="replace")):
                raise VerifyFailed(f"body does not match {_BODY_HASH}")
            params = b""
        else:
            params = _form_params(inbound.body)
        for candidate in _port_variants(url):
            if match(keys, (candidate.encode(errors="replace"), params), (received,)) >= 0:
                return None
        raise VerifyFailed("signature mismatch")

    return verify


def _with_query(public_url: str, seen_url: str) -> str:
    query = seen_url.partition("?")[2]
    if not query:
        return public_url
    return f"{public_url}{'&' if '?' in public_url else '?'}{query}"


def _query_value(query: str, name: str) -> str | None:
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            return value
    return None


def _form_params(body: bytes) -> bytes:
    if not body:
        return b""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise VerifyFailed("body is not UTF-8 form data") from None
    grouped: dict[str, set[str]] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        grouped.setdefault(name, set()).add(value)
    return "".join(
        name + value for name in sorted(grouped) for value in sorted(grouped[name])
    ).encode()


def _port_variants(url: str) -> tuple[str, ...]:
    """The URL as given, then the same URL without its port, or with the default one added.

    String surgery rather than urlunsplit, which would normalise (e.g. drop an empty '?')
    and so change the bytes Twilio signed.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return (url,)
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if 0 <= found < end:
            end = found
    netloc = rest[:end]
    host, colon, port = netloc.rpartition(":")
    if colon and port.isdigit() and not netloc.endswith("]"):
        other = host
    else:
        default = _DEFAULT_PORTS.get(scheme.lower())
        if default is None:
            return (url,)
        other = f"{netloc}:{default}"
    return (url, f"{scheme}://{other}{rest[end:]}")
