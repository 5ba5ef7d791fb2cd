"""`whctl validate` on a corpus of broken files (tests/corpus/validate/): every message names
the file, the line, the document (one-based), the resource, the field and the reason, in plain
words; files are read once each and one unreadable file stops none of the others."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli.whctl import app
from providers.errors import DocumentErrors
from providers.loader import load_documents, load_paths, private_destinations

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path("tests/corpus/validate")

# What a person reads, exactly, per file of the corpus.
EXPECTED = {
    "typo.yaml": [
        f"{CORPUS}/typo.yaml:14 (document 2, Webhook acme/github-push): "
        "spec.limits.rate_per_secnd: unknown field; did you mean rate_per_second?"],
    "wrong-type.yaml": [
        f"{CORPUS}/wrong-type.yaml:6 (document 1, Webhook acme/wrong-type): spec.verify: "
        "unknown scheme 'githb'; expected one of 'github', 'gitlab', 'stripe', 'slack', "
        "'shopify', 'standard', 'twilio', 'zoom', 'hmac', 'bearer', 'basic', 'api_key', 'jwt', "
        "'none'; did you mean github?",
        f"{CORPUS}/wrong-type.yaml:10 (document 1, Webhook acme/wrong-type): "
        "spec.limits.max_body_bytes: must be a whole number, not 'big'"],
    "missing-field.yaml": [
        f"{CORPUS}/missing-field.yaml:6 (document 1, Webhook acme/missing-field): "
        "spec.verify.secret: required, but missing",
        f"{CORPUS}/missing-field.yaml:9 (document 1, Webhook acme/missing-field): "
        "spec.chain.steps: needs at least 1 item, has 0"],
    "bad-reference.yaml": [
        f"{CORPUS}/bad-reference.yaml:8 (document 1, Webhook acme/bad-reference): "
        "spec.verify.secret: vault reference 'acme/github' needs '#FIELD' after the path"],
    "plaintext-secret.yaml": [
        f"{CORPUS}/plaintext-secret.yaml:8 (document 1, Webhook acme/plaintext): "
        "spec.verify.secret: plaintext secret: use a reference such as {$vault:PATH#FIELD}, "
        "or pass --allow-plaintext-secrets"],
    "yaml-syntax.yaml": [
        f"{CORPUS}/yaml-syntax.yaml:7 (document 2): invalid YAML: could not find expected "
        "':' (a line that is neither `key: value` nor `- item`)"],
    "duplicate.yaml": [
        f"{CORPUS}/duplicate.yaml:9 (document 2, Connection acme/api): metadata.name: "
        f"Connection/acme/api already defined at {CORPUS}/duplicate.yaml:2 (document 1, "
        "Connection acme/api)"],
    "binary.yaml": [
        f"{CORPUS}/binary.yaml:2: not UTF-8 text (byte 0xff at offset 29): a binary file, or "
        "text in another encoding?"],
}
# Programmers' wording that must never reach a person.
JARGON = ("Input should", "Field required", "Tuple should", "unable to parse", "after validation",
          "String should", "Extra inputs", "[0]: plaintext", "type=", "pydantic")
IN_A_DOCUMENT = re.compile(
    r"^(?P<file>\S+):(?P<line>\d+) \(document (?P<doc>\d+)(?:, (?P<kind>[A-Z]\w+) "
    r"(?P<name>[a-z0-9/-]+))?\): (?:(?P<field>[\w.\[\]-]+): )?(?P<reason>.+)$")


@pytest.fixture(autouse=True)
def in_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # messages name files as given: relative, as a person types them


def validate(*paths: str | Path) -> Result:
    args = ["validate"] + [a for p in paths for a in ("-f", str(p))]
    return CliRunner().invoke(app, args, env={"WHCTL_TOKEN": None, "WHCTL_SERVER": None})


def messages(result: Result) -> list[str]:
    return [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_broken_file_is_explained(name: str) -> None:
    result = validate(CORPUS / name)
    assert result.exit_code == 1 and result.stdout == ""
    assert messages(result) == EXPECTED[name], result.stderr
    for message in messages(result):
        assert not any(j in message for j in JARGON), message
        where = IN_A_DOCUMENT.match(message)
        if name != "binary.yaml":  # a file that is not text has no documents to name
            assert where is not None, message
            assert where["file"] == f"{CORPUS}/{name}" and int(where["line"]) > 1
        if name not in ("binary.yaml", "yaml-syntax.yaml"):
            assert where is not None and where["field"] and where["kind"], message


def test_an_empty_file_is_refused_as_apply_refuses_it() -> None:
    result = validate(CORPUS / "empty.yaml")
    assert result.exit_code == 1
    assert f"warning: {CORPUS}/empty.yaml: no resources in this file" in result.stderr
    assert f"error: no resources in {CORPUS}/empty.yaml" in result.stderr


def test_the_whole_corpus_at_once_reports_every_file(tmp_path: Path) -> None:
    """A directory holding a binary file: every other file is still checked, each named."""
    result = validate(CORPUS)
    assert result.exit_code == 1
    got = messages(result)
    assert set(got) == {m for expected in EXPECTED.values() for m in expected}, got
    assert f"{CORPUS}/empty.yaml: no resources in this file" in result.stderr


def test_a_file_given_twice_is_read_once() -> None:
    twice = validate(CORPUS / "typo.yaml", CORPUS / "typo.yaml", CORPUS)
    assert messages(twice).count(EXPECTED["typo.yaml"][0]) == 1
    assert "already defined" not in "".join(
        m for m in messages(twice) if "duplicate.yaml" not in m)


def test_a_valid_directory_beside_the_corpus(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    shutil.copy(CORPUS / "binary.yaml", tmp_path / "examples" / "zz-binary.yaml")
    result = validate(tmp_path / "examples")
    assert messages(result) == [
        f"{tmp_path}/examples/zz-binary.yaml:2: not UTF-8 text (byte 0xff at offset 29): a "
        "binary file, or text in another encoding?"]


def test_json_files_name_documents_and_resources() -> None:
    text = ('[{"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "a"}}, '
            '{"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "b"}, '
            '"spce": {}}]')
    with pytest.raises(DocumentErrors) as exc:
        load_documents([("ns.json", text)])
    [error] = exc.value.errors
    assert error.readable() == ("ns.json (document 2, Namespace b): spce: unknown field; did "
                                "you mean spec?")
    assert error.as_dict() | {"line": None} == {
        "source": "ns.json", "document": 1, "field": "spce", "reason": error.reason,
        "line": None, "resource": "Namespace b"}


def test_a_private_destination_is_a_warning_that_says_why(tmp_path: Path) -> None:
    f = tmp_path / "conn.yaml"
    f.write_text("apiVersion: whplane/v1\nkind: Connection\nmetadata: {name: local, namespace: "
                 "acme}\nspec:\n  type: http\n  url: http://127.0.0.1:9000/hooks\n")
    [warning] = private_destinations(load_paths([f]))
    assert warning.readable().startswith(
        f"{f}:6 (document 1, Connection acme/local): spec.url: 127.0.0.1 is a loopback address: "
        "gateways refuse to deliver there (SSRF guard)")
    result = validate(f)
    assert result.exit_code == 0 and "warning:" in result.stderr and "allow_private" in (
        result.stderr)
    f.write_text(f.read_text() + "  allow_private: true\n")
    assert private_destinations(load_paths([f])) == []
    f.write_text(f.read_text().replace("127.0.0.1", "{$API_URL:http://127.0.0.1}"))
    assert private_destinations(load_paths([f])) == []  # the gateway's environment decides
