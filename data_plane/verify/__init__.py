"""Webhook verification: one module per `spec.verify` scheme, each turning a spec into a
`Verifier` once per snapshot so the per-request path only hashes and compares.

    verifier = build_verifier(webhook.spec.verify)
    answer = verifier(inbound)   # None: deliver; Answer: reply with it; VerifyFailed: 401

Building may raise ValueError for a spec that validates as a model but cannot be used (a
`whsec_` secret that is not base64, a PEM that is not a public key); its message names the
problem, never the secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from data_plane.verify import (
    api_key,
    basic,
    bearer,
    github,
    gitlab,
    hmac_scheme,
    ip_allow,
    shopify,
    slack,
    standard,
    stripe,
    twilio,
    zoom,
)
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Verify

__all__ = ["Answer", "Inbound", "Verifier", "VerifyFailed", "build_verifier"]


def _accept(inbound: Inbound) -> Answer | None:
    return None


def _build_none(spec: Any) -> Verifier:
    return _accept


def _build_jwt(spec: Any) -> Verifier:
    # PyJWT and its key types are imported on the first JWT-verified webhook.
    from data_plane.verify import jwt_scheme

    return jwt_scheme.build(spec)


_BUILDERS: Mapping[str, Callable[[Any], Verifier]] = {
    "github": github.build,
    "gitlab": gitlab.build,
    "stripe": stripe.build,
    "slack": slack.build,
    "shopify": shopify.build,
    "standard": standard.build,
    "twilio": twilio.build,
    "zoom": zoom.build,
    "hmac": hmac_scheme.build,
    "bearer": bearer.build,
    "basic": basic.build,
    "api_key": api_key.build,
    "jwt": _build_jwt,
    "none": _build_none,
}


def build_verifier(spec: Verify) -> Verifier:
    """The verifier for `spec`, checking the caller's address first when `ip_allow` is set."""
    verifier = _BUILDERS[spec.scheme](spec)
    if not spec.ip_allow:
        return verifier
    check_ip = ip_allow.build(spec)

    def verify_from_allowed(inbound: Inbound) -> Answer | None:
        # The address check is the cheaper one, and a refused caller learns nothing about
        # what its signature would have got it.
        check_ip(inbound.client_ip, inbound.headers)
        return verifier(inbound)

    return verify_from_allowed
