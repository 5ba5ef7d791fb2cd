"""A JWT in `spec.header` (by default `Authorization: Bearer <jwt>`), checked with PyJWT.

Each secret is either an HS* shared secret or a PEM public key (or certificate) for RS*/ES*.
Keys are loaded once and each is bound to the algorithms of its own family, so a token can
never make a public key serve as an HMAC secret (algorithm confusion), whatever its header
says. Times (exp, nbf, iat) are checked here against `Inbound.now`, not PyJWT's own clock, so
every scheme judges a request at the same instant.
"""

from __future__ import annotations

from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509 import load_pem_x509_certificate
from jwt.exceptions import (
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Jwt

_Key = bytes | RSAPublicKey | EllipticCurvePublicKey

_DECODER = jwt.PyJWT()


def _load(secret: str, index: int) -> _Key:
    text = secret.strip()
    if not text.startswith("-----BEGIN"):
        return secret.encode()
    data = text.encode()
    try:
        if text.startswith("-----BEGIN CERTIFICATE"):
            key: Any = load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError:
        raise ValueError(f"jwt: secret #{index} is not a readable PEM public key") from None
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        raise ValueError(f"jwt: secret #{index} is neither an RSA nor an EC public key")
    return key


def _family(key: _Key) -> str:
    if isinstance(key, RSAPublicKey):
        return "RS"
    if isinstance(key, EllipticCurvePublicKey):
        return "ES"
    return "HS"


def _keys_by_algorithm(spec: Jwt) -> dict[str, tuple[_Key, ...]]:
    by_alg: dict[str, list[_Key]] = {alg: [] for alg in spec.algorithms}
    for index, secret in enumerate(spec.secret, start=1):
        key = _load(secret, index)
        family = _family(key)
        usable = [alg for alg in spec.algorithms if alg.startswith(family)]
        if not usable:
            raise ValueError(
                f"jwt: secret #{index} is a {family}* key but algorithms allow only "
                f"{', '.join(spec.algorithms)}"
            )
        for alg in usable:
            by_alg[alg].append(key)
    return {alg: tuple(keys) for alg, keys in by_alg.items() if keys}


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VerifyFailed(f"token claim {name} is not a number")
    return float(value)


def build(spec: Jwt) -> Verifier:
    keys_by_alg = _keys_by_algorithm(spec)
    name, display = spec.header.lower(), spec.header
    issuer, audience, leeway = spec.issuer, spec.audience, spec.leeway_s
    options: Any = {
        "verify_signature": True,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_iss": issuer is not None,
        # An unset audience means "not checked", not "the token must have none".
        "verify_aud": audience is not None,
        "require": ["exp"],
    }

    def verify(inbound: Inbound) -> Answer | None:
        raw = inbound.headers.get(name)
        if not raw:
            raise VerifyFailed(f"missing header {display}")
        text = raw.strip()
        if text[:7].lower() == "bearer ":
            text = text[7:].strip()
        try:
            # A JWT is ASCII; PyJWT would raise UnicodeEncodeError, not a PyJWTError, on
            # text that UTF-8 cannot encode.
            token = text.encode("ascii")
            alg = jwt.get_unverified_header(token).get("alg")
        except (UnicodeEncodeError, PyJWTError):
            raise VerifyFailed("malformed token") from None
        if not isinstance(alg, str) or alg not in keys_by_alg:
            raise VerifyFailed("token algorithm not allowed")
        for key in keys_by_alg[alg]:
            try:
                claims = _DECODER.decode(
                    token, key, algorithms=(alg,), options=options, audience=audience, issuer=issuer
                )
            except (InvalidSignatureError, InvalidKeyError):
                continue  # another secret may have signed it (rotation)
            except MissingRequiredClaimError as exc:
                raise VerifyFailed(f"token lacks claim {exc.claim}") from None
            except InvalidAudienceError:
                raise VerifyFailed("token audience mismatch") from None
            except InvalidIssuerError:
                raise VerifyFailed("token issuer mismatch") from None
            except PyJWTError:
                raise VerifyFailed("malformed token") from None
            _check_times(claims, inbound.now, leeway)
            return None
        raise VerifyFailed("signature mismatch")

    return verify


def _check_times(claims: dict[str, Any], now: float, leeway: float) -> None:
    # Same comparisons as PyJWT's own exp/nbf/iat checks, with the request's clock.
    exp = _number(claims, "exp")
    if exp is not None and exp <= now - leeway:
        raise VerifyFailed(f"token expired ({int(now - exp)} s ago)")
    nbf = _number(claims, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise VerifyFailed("token not yet valid (nbf)")
    iat = _number(claims, "iat")
    if iat is not None and iat > now + leeway:
        raise VerifyFailed("token issued in the future (iat)")
