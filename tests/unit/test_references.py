from collections.abc import Callable

import pytest

from providers.errors import ReferenceError_
from providers.references import EnvRef, Ref, VaultRef, env_resolver, parse, refs_in


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("{$HOME}", (EnvRef("HOME"),)),
        ("{$HOME:/tmp}", (EnvRef("HOME", "/tmp"),)),
        ("{$X:a:b}", (EnvRef("X", "a:b"),)),
        ("{$X:}", (EnvRef("X", ""),)),
        ("{$vault:acme/github#webhook_secret}", (VaultRef("acme/github", "webhook_secret"),)),
        ("{$vault:a/b#c:fallback}", (VaultRef("a/b", "c", "fallback"),)),
        ("<$vault:acme/api#token>", (VaultRef("acme/api", "token"),)),
        ("<$vault:acme/api#token:dflt>", (VaultRef("acme/api", "token", "dflt"),)),
        ("Bearer {$vault:acme/api#token}", ("Bearer ", VaultRef("acme/api", "token"))),
        ("a{$A}b{$B}c", ("a", EnvRef("A"), "b", EnvRef("B"), "c")),
        ("plain text", ("plain text",)),
        ("costs $5 <$ and {x}", ("costs $5 <$ and {x}",)),
    ],
)
def test_parse(text: str, parts: tuple[object, ...]) -> None:
    assert parse(text).parts == parts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{$}", "empty variable name in '{$}' reference"),
        ("{$:x}", "empty variable name in '{$}' reference"),
        ("{$1ABC}", "invalid variable name '1ABC'"),
        ("{$A-B}", "invalid variable name 'A-B'"),
        ("{$FOO", "unclosed reference starting at character 0: missing '}'"),
        ("x <$vault:a#b", "unclosed reference starting at character 2: missing '>'"),
        ("{$vault:acme/api}", "vault reference 'acme/api' needs '#FIELD' after the path"),
        ("{$vault:#token}", "invalid vault path '' in reference"),
        ("{$vault:a b#c}", "invalid vault path 'a b' in reference"),
        ("{$vault:a//b#c}", "invalid vault path 'a//b' in reference"),
        ("{$vault:a/b#}", "invalid vault field '' in reference to 'a/b'"),
        ("<$vault:a/b>", "vault reference 'a/b' needs '#FIELD' after the path"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ReferenceError_) as exc:
        parse(text)
    assert message in str(exc.value)


def render(text: str, resolve: Callable[[Ref], str]) -> str:
    return parse(text).render(resolve)


def test_resolution_keeps_values_exactly() -> None:
    weird = "  p@ss w/ spaces, quotes \"'; {braces} <$ $ \n"
    secrets = {("a/b", "c"): weird}

    def vault(ref: VaultRef) -> str:
        return secrets[(ref.path, ref.field)]

    resolve = env_resolver({"USER": "bob"}, vault)
    assert render("{$vault:a/b#c}", resolve) == weird
    assert render("pre-<$vault:a/b#c>-post", resolve) == f"pre-{weird}-post"
    assert render("{$USER}@{$HOST:localhost}", resolve) == "bob@localhost"


def test_missing_variable_is_an_error_never_literal() -> None:
    with pytest.raises(ReferenceError_, match="environment variable NOPE is not set"):
        render("{$NOPE}", env_resolver({}))


def test_vault_reference_without_vault() -> None:
    with pytest.raises(ReferenceError_, match="needs Vault, and no Vault is configured"):
        render("{$vault:a#b}", env_resolver({}))


def test_error_names_field_path() -> None:
    with pytest.raises(ReferenceError_, match=r"spec\.steps\[1\]: invalid variable name"):
        refs_in({"spec": {"steps": ["ok", "{$9}"]}})


@pytest.mark.parametrize("path", ["a/../b", "a/./b", "../b", "a/..", "..", "a//b", "/a", "a/"])
def test_vault_paths_are_paths(path: str) -> None:
    with pytest.raises(ReferenceError_, match="vault path"):
        parse("{$vault:" + path + "#f}")


@pytest.mark.parametrize("path", ["a%2f..%2fb", "a\\b", "a/%2e%2e/b", "a b"])
def test_vault_paths_hold_no_encoded_or_odd_characters(path: str) -> None:
    with pytest.raises(ReferenceError_, match="vault path"):
        parse("{$vault:" + path + "#f}")


def test_vault_default_applies_only_without_vault() -> None:
    assert render("{$vault:a#b:dev}", env_resolver({})) == "dev"
