"""Schemes that compare a presented credential: bearer, basic and api_key."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from data_plane.verify import VerifyFailed
from data_plane.verify.base import Inbound, Verifier

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

TOKEN = "tok_4a9b8c7d6e5f"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# bearer


def test_bearer_accepts_the_token(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "bearer", "secret": TOKEN})
    assert verify(inbound(headers={"Authorization": f"Bearer {TOKEN}"})) is None
    assert verify(inbound(headers={"Authorization": f"bearer  {TOKEN} "})) is None


def test_bearer_accepts_the_second_of_two_secrets(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    verify = verifier({"scheme": "bearer", "secret": ["old-token", TOKEN]})
    assert verify(inbound(headers={"Authorization": f"Bearer {TOKEN}"})) is None


@pytest.mark.parametrize("given", ["wrong", TOKEN + "0", TOKEN[1:], ""])
def test_bearer_rejects_a_wrong_token(
    verifier: MakeVerifier, inbound: MakeInbound, given: str
) -> None:
    verify = verifier({"scheme": "bearer", "secret": TOKEN})
    with pytest.raises(VerifyFailed, match="token mismatch"):
        verify(inbound(headers={"Authorization": f"Bearer {given}"}))


def test_bearer_rejects_a_missing_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "bearer", "secret": TOKEN})
    with pytest.raises(VerifyFailed, match="missing header Authorization"):
        verify(inbound())


@pytest.mark.parametrize("value", [TOKEN, f"Token {TOKEN}", basic("u", TOKEN)])
def test_bearer_rejects_another_auth_scheme(
    verifier: MakeVerifier, inbound: MakeInbound, value: str
) -> None:
    verify = verifier({"scheme": "bearer", "secret": TOKEN})
    with pytest.raises(VerifyFailed, match="not a Bearer token"):
        verify(inbound(headers={"Authorization": value}))


# basic


def test_basic_accepts_user_and_password(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "basic", "username": "acme", "secret": "pa:ss"})
    assert verify(inbound(headers={"Authorization": basic("acme", "pa:ss")})) is None


def test_basic_accepts_the_second_of_two_passwords(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    verify = verifier({"scheme": "basic", "username": "acme", "secret": ["old", "new"]})
    assert verify(inbound(headers={"Authorization": basic("acme", "new")})) is None
    assert verify(inbound(headers={"Authorization": basic("acme", "old")})) is None


def test_basic_accepts_a_non_ascii_password(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "basic", "username": "zoë", "secret": "pässwörd"})
    assert verify(inbound(headers={"Authorization": basic("zoë", "pässwörd")})) is None


@pytest.mark.parametrize(
    ("user", "password"), [("acme", "wrong"), ("other", "secret"), ("", ""), ("acme", "")]
)
def test_basic_rejects_wrong_credentials(
    verifier: MakeVerifier, inbound: MakeInbound, user: str, password: str
) -> None:
    verify = verifier({"scheme": "basic", "username": "acme", "secret": "secret"})
    with pytest.raises(VerifyFailed, match="credentials mismatch"):
        verify(inbound(headers={"Authorization": basic(user, password)}))


def test_basic_rejects_a_missing_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "basic", "username": "acme", "secret": "secret"})
    with pytest.raises(VerifyFailed, match="missing header Authorization"):
        verify(inbound())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Bearer secret", "not Basic credentials"),
        ("Basic !!!", "malformed header Authorization"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "malformed header Authorization"),
        ("Basic", "malformed header Authorization"),
    ],
)
def test_basic_rejects_malformed_credentials(
    verifier: MakeVerifier, inbound: MakeInbound, value: str, reason: str
) -> None:
    verify = verifier({"scheme": "basic", "username": "acme", "secret": "secret"})
    with pytest.raises(VerifyFailed, match=reason):
        verify(inbound(headers={"Authorization": value}))


# api_key


def test_api_key_in_the_default_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "api_key", "secret": TOKEN})
    assert verify(inbound(headers={"X-API-Key": TOKEN})) is None


def test_api_key_in_a_named_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "api_key", "secret": TOKEN, "name": "X-Acme-Key"})
    assert verify(inbound(headers={"x-acme-key": TOKEN})) is None
    with pytest.raises(VerifyFailed, match="missing header X-Acme-Key"):
        verify(inbound(headers={"X-API-Key": TOKEN}))


def test_api_key_in_the_query(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "api_key", "secret": "k/+=y", "in": "query", "name": "key"})
    url = "https://gw.example/webhook/acme/hook?x=1&key=k%2F%2B%3Dy"
    assert verify(inbound(url=url)) is None


def test_api_key_accepts_the_second_of_two_secrets(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    verify = verifier({"scheme": "api_key", "secret": ["old", TOKEN]})
    assert verify(inbound(headers={"X-API-Key": TOKEN})) is None
    query = verifier({"scheme": "api_key", "secret": ["old", TOKEN], "in": "query"})
    assert query(inbound(url=f"https://gw.example/h?X-API-Key={TOKEN}")) is None


def test_api_key_rejects_a_wrong_key(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "api_key", "secret": TOKEN})
    with pytest.raises(VerifyFailed, match="api key mismatch"):
        verify(inbound(headers={"X-API-Key": "nope"}))
    query = verifier({"scheme": "api_key", "secret": TOKEN, "in": "query", "name": "key"})
    with pytest.raises(VerifyFailed, match="api key mismatch"):
        query(inbound(url="https://gw.example/h?key=nope"))


def test_api_key_rejects_a_missing_key(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "api_key", "secret": TOKEN})
    with pytest.raises(VerifyFailed, match="missing header X-API-Key"):
        verify(inbound())
    query = verifier({"scheme": "api_key", "secret": TOKEN, "in": "query", "name": "key"})
    for url in [
        "https://gw.example/h",
        "https://gw.example/h?other=1",
        "https://gw.example/h?key=",
    ]:
        with pytest.raises(VerifyFailed, match="missing query parameter key"):
            query(inbound(url=url))


def test_api_key_in_a_header_is_not_read_from_the_query(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    verify = verifier({"scheme": "api_key", "secret": TOKEN})
    with pytest.raises(VerifyFailed, match="missing header"):
        verify(inbound(url=f"https://gw.example/h?X-API-Key={TOKEN}"))
