"""Settings from URLs and the environment: one validation, errors naming the source."""

from __future__ import annotations

import dataclasses

import pytest

from providers.etcd_conn import EtcdSettings
from providers.url_settings import query_options
from providers.vault_client import VaultSettings


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("timeout=-3", r"\?timeout='-3': Input should be greater than 0"),
        ("timeout=0", r"\?timeout='0'"),
        ("timeout=nan", r"\?timeout='nan': Input should be a finite number"),
        ("timeout=inf", r"\?timeout='inf'"),
        ("timeout=soon", r"\?timeout='soon'"),
        ("timeout=", r"\?timeout=''"),
        ("watchdog=-1", r"\?watchdog"),
        ("watchdog=nan", r"\?watchdog"),
        ("timeuot=3", r"unknown option \?timeuot= \(known: \?timeout=, \?watchdog=\)"),
        ("timeout=1&timeout=2", r"\?timeout= given twice"),
    ],
)
def test_etcd_url_refuses_bad_options(query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EtcdSettings.from_url(f"etcd://127.0.0.1:2379/p/?{query}")


def test_etcd_url_values_and_environment() -> None:
    s = EtcdSettings.from_url("etcd://a:1,[::1]:2/p?timeout=2.5&watchdog=0",
                              {"WH_ETCD_USERNAME": "u", "WH_ETCD_PASSWORD": "pw"})
    assert s.endpoints == (("a", 1), ("::1", 2))
    assert (s.prefix, s.timeout_s, s.watchdog_s, s.username, s.password) == (
        "/p/", 2.5, 0.0, "u", "pw")
    assert "pw" not in repr(s)
    assert EtcdSettings.from_url("etcd://a:1", {"WH_WATCHDOG_S": "3"}).watchdog_s == 3.0
    with pytest.raises(ValueError, match="WH_WATCHDOG_S"):
        EtcdSettings.from_url("etcd://a:1", {"WH_WATCHDOG_S": "-1"})
    for bad in ("etcd://a:0/p", "etcd://a:65536/p", "etcd://a/p", "etcd:///p"):
        with pytest.raises(ValueError, match=r"HOST:PORT|no endpoint"):
            EtcdSettings.from_url(bad)


def test_settings_are_validated_when_built_directly_too() -> None:
    with pytest.raises(ValueError, match="finite"):
        EtcdSettings(endpoints=(("a", 1),), timeout_s=float("nan"))
    with pytest.raises(ValueError):
        EtcdSettings(endpoints=())
    s = VaultSettings(addr="http://v/", token="t")
    assert s.addr == "http://v"
    assert dataclasses.replace(s, mount="/kv/").mount == "kv"
    with pytest.raises(ValueError, match="finite"):
        dataclasses.replace(s, timeout_s=float("inf"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.addr = "http://w"  # type: ignore[misc]


def test_errors_never_quote_a_credential() -> None:
    with pytest.raises(ValueError) as caught:
        VaultSettings(addr="vault:8200", token="TOPSECRET")
    assert "TOPSECRET" not in str(caught.value)
    with pytest.raises(ValueError) as caught:
        VaultSettings.from_env({"VAULT_ADDR": "http://v", "VAULT_TOKEN": "TOPSECRET",
                                "WH_VAULT_TIMEOUT": "x"})
    assert "TOPSECRET" not in str(caught.value) and "WH_VAULT_TIMEOUT='x'" in str(caught.value)


def test_query_options() -> None:
    assert query_options("a=1&b=", ("a", "b"), "thing") == {"a": "1", "b": ""}
    assert query_options("", ("a",), "thing") == {}
    with pytest.raises(ValueError, match=r"thing: unknown option \?c="):
        query_options("c=1", ("a",), "thing")
