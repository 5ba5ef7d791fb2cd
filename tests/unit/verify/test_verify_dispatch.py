"""build_verifier as a whole: dispatch, `none`, and the promises every scheme keeps.

Every failure is a VerifyFailed (never another exception, whatever the request holds), and no
reason, str or repr ever shows a secret or the signature the request should have carried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

import data_plane.verify as verify_pkg
from data_plane.verify import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import SCHEMES

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

SECRET = "S3cr3t-do-not-leak-0123456789abcdef0123456789abcdef0123456789ab"
SECRET_B64 = base64.b64encode(SECRET.encode()[:32]).decode()

SPECS: dict[str, dict[str, Any]] = {
    "github": {"secret": SECRET},
    "gitlab": {"secret": SECRET},
    "stripe": {"secret": "whsec_" + SECRET},
    "slack": {"secret": SECRET},
    "shopify": {"secret": SECRET},
    "standard": {"secret": "whsec_" + SECRET_B64},
    "twilio": {"secret": SECRET},
    "zoom": {"secret": SECRET},
    "hmac": {"secret": SECRET, "timestamp_header": "X-Timestamp", "prefix": "sha256="},
    "bearer": {"secret": SECRET},
    "basic": {"secret": SECRET, "username": "acme"},
    "api_key": {"secret": SECRET},
    "jwt": {"secret": SECRET},
    "none": {},
}

# Every header any scheme reads, so the fuzzing below reaches every parser.
HEADER_NAMES = [
    "x-hub-signature-256", "x-gitlab-token", "stripe-signature", "x-slack-request-timestamp",
    "x-slack-signature", "x-shopify-hmac-sha256", "webhook-id", "webhook-timestamp",
    "webhook-signature", "svix-id", "svix-timestamp", "svix-signature", "x-twilio-signature",
    "x-zm-request-timestamp", "x-zm-signature", "x-signature", "x-timestamp", "authorization",
    "x-api-key", "x-forwarded-for",
]  # fmt: skip

NASTY = [
    "", " ", "=", ",", "v0=", "v1,", "t=", "t=,v1=", "t=1700000000,v1=", "sha256=", "Bearer",
    "Bearer ", "Basic ", "Basic ====", "Bearer a.b.c", "Bearer e30.e30.e30", "\x00", "é",
    "\udcff", "\ud800", "ß" * 50, "1700000000", "-1", "1e9", "0x10", "9" * 5000, "=" * 5000,
    "v1,==== v1,AAAA", "sha256=" + "g" * 64, "sha256=" + "0" * 64, "v0=" + "f" * 64,
    "t=1700000000,v1=" + "a" * 64, "[::1", "1.2.3.4, unknown", SECRET[:8],
]  # fmt: skip

BODIES = [
    b"",
    b"\xff\xfe",
    b"{",
    b'{"event":"endpoint.url_validation","payload":{"plainToken":"\\ud800"}}',
    b'{"type":"url_verification","challenge":"\\udcff"}',
    b"a=1&a=2&%ZZ=%&&=",
    b"[" * 2000,
]

URLS = [
    "https://gw.example/webhook/acme/hook",
    "https://gw.example/h?X-API-Key=&bodySHA256=zz",
    "http://[::1/h?x=%ff%fe",
    "no-scheme",
    "https://gw.example:99999999/h?bodySHA256=" + "0" * 64,
]


def build(verifier: MakeVerifier, scheme: str, **extra: Any) -> Verifier:
    return verifier({"scheme": scheme, **SPECS[scheme], **extra})


def test_every_scheme_has_a_builder() -> None:
    assert set(verify_pkg._BUILDERS) == set(SCHEMES)


def test_public_names() -> None:
    assert set(verify_pkg.__all__) == {
        "Answer", "Inbound", "Verifier", "VerifyFailed", "build_verifier",
    }  # fmt: skip


def test_none_accepts_everything(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = build(verifier, "none")
    assert verify(inbound()) is None
    assert verify(inbound(headers={"authorization": "junk"}, body=b"\xff", url="x")) is None


def test_none_with_ip_allow_still_checks_the_address(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    verify = verifier({"scheme": "none", "ip_allow": ["192.0.2.0/24"]})
    assert verify(inbound(client_ip="192.0.2.4")) is None
    with pytest.raises(VerifyFailed, match="source address not allowed"):
        verify(inbound(client_ip="198.51.100.4"))


def test_verify_failed_shape() -> None:
    failure = VerifyFailed("signature mismatch")
    assert failure.reason == str(failure) == "signature mismatch"
    assert repr(failure) == "VerifyFailed('signature mismatch')"


def test_inbound_and_answer_are_frozen(inbound: MakeInbound) -> None:
    request = inbound()
    with pytest.raises(AttributeError):
        request.body = b"x"  # type: ignore[misc]
    answer = Answer(200, b"ok", "text/plain")
    with pytest.raises(AttributeError):
        answer.status = 500  # type: ignore[misc]


def _forbidden(request: Inbound) -> list[str]:
    """What must never show in a reason: the secrets, and signatures valid for `request`."""
    key = SECRET.encode()
    body, ts = request.body, request.headers.get("x-timestamp", "")
    return [
        SECRET,
        SECRET[:16],
        SECRET_B64,
        hmac.new(key, body, hashlib.sha256).hexdigest(),
        base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode(),
        hmac.new(key, f"{ts}.".encode(errors="replace") + body, hashlib.sha256).hexdigest(),
    ]


def _assert_clean(failure: VerifyFailed, request: Inbound) -> None:
    shown = " ".join((failure.reason, str(failure), repr(failure), repr(failure.args)))
    for secret in _forbidden(request):
        assert secret not in shown, f"{failure.reason!r} leaks a secret or signature"


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "none"])
def test_fuzzed_requests_fail_only_with_clean_verify_failed(
    verifier: MakeVerifier, scheme: str, now: float
) -> None:
    verify = build(verifier, scheme)
    rng = random.Random(scheme)
    for _ in range(400):
        names = rng.sample(HEADER_NAMES, rng.randint(0, len(HEADER_NAMES)))
        headers = {name: rng.choice(NASTY) for name in names}
        if rng.random() < 0.5:  # plausible timestamps reach the signature checks too
            for name in ("x-slack-request-timestamp", "webhook-timestamp", "svix-timestamp",
                         "x-zm-request-timestamp", "x-timestamp"):  # fmt: skip
                headers[name] = str(int(now))
        request = Inbound(
            rng.choice(["POST", "GET"]),
            rng.choice(URLS),
            headers,
            rng.choice(BODIES),
            rng.choice(["203.0.113.7", "::1", "junk"]),
            now,
        )
        try:
            result = verify(request)
        except VerifyFailed as failure:
            _assert_clean(failure, request)
        else:
            pytest.fail(f"{scheme} accepted a fuzzed request: {result!r}")


def _failing_requests(now: float) -> list[Inbound]:
    """Near misses that reach each scheme's comparison with the right shape of header."""
    body = b'{"id": 1}'
    ts = str(int(now))
    wrong = hmac.new(b"wrong", body, hashlib.sha256)
    hex_sig, b64_sig = wrong.hexdigest(), base64.b64encode(wrong.digest()).decode()
    headers = {
        "x-hub-signature-256": "sha256=" + hex_sig,
        "x-gitlab-token": "wrong",
        "stripe-signature": f"t={ts},v1={hex_sig}",
        "x-slack-request-timestamp": ts,
        "x-slack-signature": "v0=" + hex_sig,
        "x-shopify-hmac-sha256": b64_sig,
        "webhook-id": "msg_1",
        "webhook-timestamp": ts,
        "webhook-signature": "v1," + b64_sig,
        "x-twilio-signature": b64_sig,
        "x-zm-request-timestamp": ts,
        "x-zm-signature": "v0=" + hex_sig,
        "x-signature": "sha256=" + hex_sig,
        "x-timestamp": ts,
        "authorization": "Bearer " + SECRET[:-1],
        "x-api-key": SECRET + "x",
    }
    stale = {**headers, "x-timestamp": str(int(now) - 10_000)}
    stale["stripe-signature"] = f"t={int(now) - 10_000},v1={hex_sig}"
    for name in ("x-slack-request-timestamp", "webhook-timestamp", "x-zm-request-timestamp"):
        stale[name] = str(int(now) - 10_000)
    url = "https://gw.example/h"
    return [
        Inbound("POST", url, headers, body, "203.0.113.7", now),
        Inbound("POST", url, stale, body, "203.0.113.7", now),
        Inbound("POST", url, {}, body, "203.0.113.7", now),
    ]


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "none"])
def test_near_misses_are_refused_without_leaking(
    verifier: MakeVerifier, scheme: str, now: float
) -> None:
    verify = build(verifier, scheme)
    for request in _failing_requests(now):
        with pytest.raises(VerifyFailed) as caught:
            verify(request)
        _assert_clean(caught.value, request)


@pytest.mark.parametrize(
    "spec",
    [
        {"scheme": "standard", "secret": "whsec_" + SECRET},  # not base64
        {"scheme": "jwt", "secret": SECRET, "algorithms": ["RS256"]},
        {"scheme": "jwt", "secret": "-----BEGIN PUBLIC KEY-----\n" + SECRET + "\n-----END"},
    ],
)
def test_build_errors_do_not_leak_the_secret(verifier: MakeVerifier, spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as caught:
        verifier(spec)
    shown = f"{caught.value} {caught.value!r}"
    assert SECRET not in shown
    assert SECRET[:16] not in shown


def test_challenge_answers_are_the_only_answers(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    # Answers are for endpoint challenges; an ordinary signed event is delivered (None).
    verify = build(verifier, "zoom")
    body = json.dumps({"event": "meeting.started"}).encode()
    mac = hmac.new(SECRET.encode(), f"v0:{int(now)}:".encode() + body, hashlib.sha256)
    headers = {"x-zm-request-timestamp": str(int(now)), "x-zm-signature": "v0=" + mac.hexdigest()}
    assert verify(inbound(headers=headers, body=body)) is None


def test_many_secrets_all_work(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    secrets = [f"secret-number-{i}" for i in range(5)]
    verify = verifier({"scheme": "github", "secret": secrets})
    for secret, body in itertools.product(secrets, [b"", b"x"]):
        sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert verify(inbound(headers={"X-Hub-Signature-256": sig}, body=body)) is None
