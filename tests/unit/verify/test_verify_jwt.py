"""jwt: HS* shared secrets and RS*/ES* PEM public keys, claims checked at Inbound.now."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.utils import base64url_encode

from data_plane.verify import VerifyFailed
from data_plane.verify.base import Inbound, Verifier
from data_plane.verify.jwt_scheme import build
from providers.verify_spec import Jwt

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

# 64 bytes, so PyJWT does not warn about short keys for any HS* size.
HS_SECRET = "hs-secret-" + "0123456789abcdef" * 3 + "012345"
HS_OTHER = "hs-other--" + "fedcba9876543210" * 3 + "543210"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def claims(now: float, **extra: Any) -> dict[str, Any]:
    return {"sub": "acme", "iat": int(now), "exp": int(now) + 600, **extra}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_hs256_accepted(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    token = jwt.encode(claims(now), HS_SECRET, algorithm="HS256")
    assert verify(inbound(headers=bearer(token), now=now)) is None


def test_hs_accepts_the_second_of_two_secrets(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "jwt", "secret": [HS_OTHER, HS_SECRET]})
    token = jwt.encode(claims(now), HS_SECRET, algorithm="HS256")
    assert verify(inbound(headers=bearer(token))) is None


def test_hs_rejects_a_wrong_secret(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    token = jwt.encode(claims(now), HS_OTHER, algorithm="HS256")
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=bearer(token)))


def test_rejects_a_tampered_payload(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    token = jwt.encode(claims(now), HS_SECRET, algorithm="HS256")
    forged = jwt.encode(claims(now, sub="admin"), HS_OTHER, algorithm="HS256")
    head, _, sig = token.split(".")
    spliced = ".".join((head, forged.split(".")[1], sig))
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=bearer(spliced)))


def test_rejects_an_expired_token(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    token = jwt.encode(claims(now, exp=int(now) - 31), HS_SECRET, algorithm="HS256")
    with pytest.raises(VerifyFailed, match=r"token expired \(31 s ago\)"):
        verify(inbound(headers=bearer(token)))


def test_leeway_allows_a_just_expired_token(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET, "leeway_s": 30})
    token = jwt.encode(claims(now, exp=int(now) - 29), HS_SECRET, algorithm="HS256")
    assert verify(inbound(headers=bearer(token))) is None


def test_times_are_judged_at_inbound_now_not_the_wall_clock(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    # Tokens from 2001: valid then, long expired by the wall clock.
    then = 1_000_000_000.0
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    token = jwt.encode(claims(then), HS_SECRET, algorithm="HS256")
    assert verify(inbound(headers=bearer(token), now=then)) is None


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"nbf": 1_700_000_100}, "not yet valid"),
        ({"iat": 1_700_000_100}, "issued in the future"),
        ({"exp": "tomorrow"}, "exp is not a number"),
        ({"exp": True}, "exp is not a number"),
    ],
)
def test_rejects_bad_time_claims(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, extra: dict[str, Any], reason: str
) -> None:
    assert now == 1_700_000_000.0
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    token = jwt.encode(claims(now, **extra), HS_SECRET, algorithm="HS256")
    with pytest.raises(VerifyFailed, match=reason):
        verify(inbound(headers=bearer(token)))


def test_exp_is_required(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    token = jwt.encode({"sub": "acme"}, HS_SECRET, algorithm="HS256")
    with pytest.raises(VerifyFailed, match="token lacks claim exp"):
        verify(inbound(headers=bearer(token)))


def test_issuer_and_audience(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    spec = {"scheme": "jwt", "secret": HS_SECRET, "issuer": "https://idp", "audience": "gw"}
    verify = verifier(spec)
    good = jwt.encode(claims(now, iss="https://idp", aud="gw"), HS_SECRET, algorithm="HS256")
    assert verify(inbound(headers=bearer(good))) is None
    cases = [
        (claims(now, iss="https://evil", aud="gw"), "token issuer mismatch"),
        (claims(now, iss="https://idp", aud="other"), "token audience mismatch"),
        (claims(now, aud="gw"), "token lacks claim iss"),
        (claims(now, iss="https://idp"), "token lacks claim aud"),
    ]
    for payload, reason in cases:
        token = jwt.encode(payload, HS_SECRET, algorithm="HS256")
        with pytest.raises(VerifyFailed, match=reason):
            verify(inbound(headers=bearer(token)))


def test_an_unset_audience_is_not_checked(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    token = jwt.encode(claims(now, aud="anything"), HS_SECRET, algorithm="HS256")
    assert verify(inbound(headers=bearer(token))) is None


def test_rejects_a_missing_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    with pytest.raises(VerifyFailed, match="missing header Authorization"):
        verify(inbound())


@pytest.mark.parametrize("value", ["Bearer", "Bearer abc", "Bearer a.b.c", "Basic dXNlcjpwYXNz"])
def test_rejects_a_malformed_token(
    verifier: MakeVerifier, inbound: MakeInbound, value: str
) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    with pytest.raises(VerifyFailed, match="malformed token"):
        verify(inbound(headers={"Authorization": value}))


def test_rejects_alg_none_and_unlisted_algorithms(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET})
    unsigned = jwt.encode(claims(now), "", algorithm="none")
    hs512 = jwt.encode(claims(now), HS_SECRET, algorithm="HS512")
    for token in (unsigned, hs512):
        with pytest.raises(VerifyFailed, match="token algorithm not allowed"):
            verify(inbound(headers=bearer(token)))


def test_custom_header_without_bearer_prefix(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "jwt", "secret": HS_SECRET, "header": "X-Token"})
    token = jwt.encode(claims(now), HS_SECRET, algorithm="HS256")
    assert verify(inbound(headers={"X-Token": token})) is None
    with pytest.raises(VerifyFailed, match="missing header X-Token"):
        verify(inbound(headers=bearer(token)))


def test_rs256_with_a_pem_public_key(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, rsa_key: rsa.RSAPrivateKey
) -> None:
    verify = verifier({"scheme": "jwt", "secret": public_pem(rsa_key), "algorithms": ["RS256"]})
    token = jwt.encode(claims(now), rsa_key, algorithm="RS256")
    assert verify(inbound(headers=bearer(token))) is None
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=bearer(jwt.encode(claims(now), other, algorithm="RS256"))))


def test_es256_and_rs256_keys_side_by_side(
    verifier: MakeVerifier,
    inbound: MakeInbound,
    now: float,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    spec = {
        "scheme": "jwt",
        "secret": [public_pem(rsa_key), public_pem(ec_key), HS_SECRET],
        "algorithms": ["RS256", "ES256", "HS256"],
    }
    verify = verifier(spec)
    for key, alg in ((rsa_key, "RS256"), (ec_key, "ES256"), (HS_SECRET, "HS256")):
        token = jwt.encode(claims(now), key, algorithm=alg)
        assert verify(inbound(headers=bearer(token))) is None


def test_a_certificate_pem_is_accepted(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2040, 1, 1, tzinfo=dt.UTC))
        .sign(ec_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    verify = verifier({"scheme": "jwt", "secret": pem, "algorithms": ["ES256"]})
    assert (
        verify(inbound(headers=bearer(jwt.encode(claims(now), ec_key, algorithm="ES256")))) is None
    )


def test_public_key_cannot_be_used_as_an_hmac_secret(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, rsa_key: rsa.RSAPrivateKey
) -> None:
    # Algorithm confusion: an attacker signs HS256 with the (public) PEM text as the secret.
    pem = public_pem(rsa_key)
    verify = verifier(
        {"scheme": "jwt", "secret": [pem, HS_SECRET], "algorithms": ["RS256", "HS256"]}
    )
    head = base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    body = base64url_encode(f'{{"sub":"x","exp":{int(now) + 60}}}'.encode())
    mac = hmac.new(pem.encode(), head + b"." + body, hashlib.sha256).digest()
    forged = b".".join((head, body, base64url_encode(mac))).decode()
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=bearer(forged)))


@pytest.mark.parametrize(
    ("secret", "algorithms", "reason"),
    [
        ("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n", ["RS256"], "readable"),
        (HS_SECRET, ["RS256", "ES256"], "HS\\* key but algorithms allow only RS256, ES256"),
    ],
)
def test_unusable_secrets_fail_at_build_time(
    secret: str, algorithms: list[str], reason: str
) -> None:
    spec: dict[str, Any] = {"scheme": "jwt", "secret": secret, "algorithms": algorithms}
    with pytest.raises(ValueError, match=reason) as caught:
        build(Jwt(**spec))
    assert secret.strip() not in str(caught.value)


def test_a_pem_key_with_only_hs_algorithms_fails_at_build_time(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="RS\\* key but algorithms allow only HS256"):
        build(Jwt(scheme="jwt", secret=(public_pem(rsa_key),)))
