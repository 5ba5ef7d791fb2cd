"""Twilio: X-Twilio-Signature over the URL plus sorted form parameters (or bodySHA256)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest

from data_plane.verify import VerifyFailed
from data_plane.verify.base import Inbound, Verifier

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

# The examples of Twilio's own helper libraries (twilio-python, twilio-php, twilio-csharp tests).
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
DOC_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
DOC_DUPLICATES = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"),
                  ("Digits", "1234"), ("Digits", "1234")]  # fmt: skip
DOC_DUPLICATES_SIGNATURE = "IK+Dwps556ElfBT0I3Rgjkr1wJU="
DOC_JSON_BODY = b'{"property": "value", "boolean": true}'
DOC_BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
DOC_JSON_SIGNATURE = "a9nBmqA0ju/hNViExpshrM61xv4="

TOKEN = "twilio-auth-token-0f0f0f"
URL = "https://gw.example/webhook/acme/sms"
PARAMS = {"MessageSid": "SM1", "Body": "Hello & goodbye", "From": "+15551234567", "To": "+1555"}


def form(params: dict[str, str] | list[tuple[str, str]]) -> bytes:
    return urlencode(params).encode()


def sign(token: str, data: str, digest: str = "sha1") -> str:
    return base64.b64encode(hmac.new(token.encode(), data.encode(), digest).digest()).decode()


def sign_form(token: str, url: str, params: dict[str, str], digest: str = "sha1") -> str:
    return sign(token, url + "".join(k + params[k] for k in sorted(params)), digest)


def test_twilio_documented_form_example(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": DOC_TOKEN})
    request = inbound(
        url=DOC_URL, headers={"X-Twilio-Signature": DOC_SIGNATURE}, body=form(DOC_PARAMS)
    )
    assert verify(request) is None


def test_twilio_documented_duplicate_parameters_example(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    verify = verifier({"scheme": "twilio", "secret": DOC_TOKEN})
    request = inbound(
        url=DOC_URL,
        headers={"X-Twilio-Signature": DOC_DUPLICATES_SIGNATURE},
        body=form(DOC_DUPLICATES),
    )
    assert verify(request) is None


def test_twilio_documented_json_body_example(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": DOC_TOKEN})
    request = inbound(
        url=f"{DOC_URL}&bodySHA256={DOC_BODY_HASH}",
        headers={"X-Twilio-Signature": DOC_JSON_SIGNATURE},
        body=DOC_JSON_BODY,
    )
    assert verify(request) is None


def test_json_body_tampered_is_refused(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": DOC_TOKEN})
    request = inbound(
        url=f"{DOC_URL}&bodySHA256={DOC_BODY_HASH}",
        headers={"X-Twilio-Signature": DOC_JSON_SIGNATURE},
        body=DOC_JSON_BODY.replace(b"true", b"false"),
    )
    with pytest.raises(VerifyFailed, match="body does not match bodySHA256"):
        verify(request)


def test_json_body_hash_swapped_in_the_url_is_refused(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    # An attacker who changes the body and recomputes bodySHA256 changes the signed URL.
    verify = verifier({"scheme": "twilio", "secret": DOC_TOKEN})
    body = b'{"property": "evil"}'
    request = inbound(
        url=f"{DOC_URL}&bodySHA256={hashlib.sha256(body).hexdigest()}",
        headers={"X-Twilio-Signature": DOC_JSON_SIGNATURE},
        body=body,
    )
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(request)


def test_accepts_a_correct_signature(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": TOKEN})
    sig = sign_form(TOKEN, URL, PARAMS)
    assert verify(inbound(url=URL, headers={"X-Twilio-Signature": sig}, body=form(PARAMS))) is None


def test_accepts_the_second_of_two_secrets(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": ["old-token", TOKEN]})
    sig = sign_form(TOKEN, URL, PARAMS)
    assert verify(inbound(url=URL, headers={"X-Twilio-Signature": sig}, body=form(PARAMS))) is None


def test_sha256_algorithm(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": TOKEN, "algorithm": "sha256"})
    sig = sign_form(TOKEN, URL, PARAMS, "sha256")
    assert verify(inbound(url=URL, headers={"X-Twilio-Signature": sig}, body=form(PARAMS))) is None
    sha1 = sign_form(TOKEN, URL, PARAMS)
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(url=URL, headers={"X-Twilio-Signature": sha1}, body=form(PARAMS)))


def test_rejects_a_tampered_parameter(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": TOKEN})
    sig = sign_form(TOKEN, URL, PARAMS)
    body = form({**PARAMS, "Body": "Hello & goodbye!"})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(url=URL, headers={"X-Twilio-Signature": sig}, body=body))


def test_rejects_an_added_parameter(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": TOKEN})
    sig = sign_form(TOKEN, URL, PARAMS)
    body = form({**PARAMS, "Extra": "1"})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(url=URL, headers={"X-Twilio-Signature": sig}, body=body))


def test_rejects_a_different_url(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": TOKEN})
    sig = sign_form(TOKEN, URL, PARAMS)
    request = inbound(url=URL + "?x=1", headers={"X-Twilio-Signature": sig}, body=form(PARAMS))
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(request)


def test_rejects_a_wrong_secret(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": TOKEN})
    sig = sign_form("wrong", URL, PARAMS)
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(url=URL, headers={"X-Twilio-Signature": sig}, body=form(PARAMS)))


def test_rejects_a_missing_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": TOKEN})
    with pytest.raises(VerifyFailed, match="missing header X-Twilio-Signature"):
        verify(inbound(url=URL, body=form(PARAMS)))


def test_rejects_a_malformed_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": TOKEN})
    with pytest.raises(VerifyFailed, match="malformed header X-Twilio-Signature"):
        verify(inbound(url=URL, headers={"X-Twilio-Signature": "***"}, body=form(PARAMS)))


def test_rejects_a_body_that_is_not_utf8(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "twilio", "secret": TOKEN})
    sig = sign_form(TOKEN, URL, PARAMS)
    with pytest.raises(VerifyFailed, match="not UTF-8"):
        verify(inbound(url=URL, headers={"X-Twilio-Signature": sig}, body=b"Body=\xff\xfe"))


@pytest.mark.parametrize(
    ("seen", "signed"),
    [
        ("https://gw.example:443/hook?a=1", "https://gw.example/hook?a=1"),
        ("https://gw.example/hook?a=1", "https://gw.example:443/hook?a=1"),
        ("http://gw.example:8080/hook", "http://gw.example/hook"),
        ("http://[2001:db8::1]/hook", "http://[2001:db8::1]:80/hook"),
    ],
)
def test_url_with_or_without_port_is_accepted(
    verifier: MakeVerifier, inbound: MakeInbound, seen: str, signed: str
) -> None:
    verify = verifier({"scheme": "twilio", "secret": TOKEN})
    sig = sign_form(TOKEN, signed, PARAMS)
    assert verify(inbound(url=seen, headers={"X-Twilio-Signature": sig}, body=form(PARAMS))) is None


def test_public_url_replaces_the_seen_url_and_keeps_its_query(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    public = "https://hooks.acme.example/twilio/sms"
    verify = verifier({"scheme": "twilio", "secret": TOKEN, "public_url": public})
    sig = sign_form(TOKEN, public + "?tenant=7", PARAMS)
    seen = "http://10.0.0.5:8080/webhook/acme/sms?tenant=7"
    assert verify(inbound(url=seen, headers={"X-Twilio-Signature": sig}, body=form(PARAMS))) is None


def test_public_url_without_query(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    public = "https://hooks.acme.example/twilio/sms"
    verify = verifier({"scheme": "twilio", "secret": TOKEN, "public_url": public})
    sig = sign_form(TOKEN, public, PARAMS)
    seen = "http://10.0.0.5:8080/webhook/acme/sms"
    assert verify(inbound(url=seen, headers={"X-Twilio-Signature": sig}, body=form(PARAMS))) is None


def test_get_request_signs_the_url_alone(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    url = URL + "?CallSid=CA1&From=%2B1555"
    verify = verifier({"scheme": "twilio", "secret": TOKEN})
    request = inbound(method="GET", url=url, headers={"X-Twilio-Signature": sign(TOKEN, url)})
    assert verify(request) is None
