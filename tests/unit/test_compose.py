"""docker-compose.yml and the Dockerfile, checked against the Compose specification and the code.

(a) The compose file validates against the Compose specification's JSON Schema, taken from the
    `docker-compose==1.29.2` wheel on PyPI (`compose/config/compose_spec.json`), downloaded once
    and cached under `.venv/.cache/compose-spec/`.
(b) Every whplane and whctl command in it parses with the real CLI (typer app -> click command),
    and every environment variable of a whplane service is one the code reads: a
    `GatewaySettings` / `ControlPlaneSettings` field (`WH_` prefix), a variable of
    `VaultSettings.from_env`, or of the etcd settings (`WH_ETCD_*`).
(c) The Dockerfile's entrypoint, and every entrypoint in the compose file, is a console script
    of pyproject.toml, and the image installs the project without extras.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml

from cli import whctl, whplane
from control_plane.settings import ControlPlaneSettings
from data_plane.settings import GatewaySettings
from providers.etcd_conn import EtcdSettings
from providers.vault_client import VaultSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SPEC_CACHE = ROOT / ".venv" / ".cache" / "compose-spec"
SPEC_WHEEL = "docker-compose==1.29.2"
SPEC_MEMBER = "compose/config/compose_spec.json"

# The only entrypoint override allowed besides a console script: export the Vault token from a
# Docker secret (whplane reads VAULT_TOKEN only from its environment), then exec whplane.
VAULT_WRAPPER = re.compile(
    r'export (?P<var>[A-Z_]+)="\$\$\(cat /run/secrets/(?P<secret>[\w.-]+)\)"'
    r' && exec (?P<program>[\w-]+) "\$\$@"'
)


# --- loading ---------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def compose_spec() -> dict[str, Any]:
    """The Compose specification's JSON Schema, from the docker-compose wheel (cached)."""
    wheels = sorted(SPEC_CACHE.glob("docker_compose-1.29.2-*.whl"))
    if not wheels:
        SPEC_CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=SPEC_CACHE) as tmp:
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                     "--disable-pip-version-check", SPEC_WHEEL, "-d", tmp],
                    capture_output=True, text=True, timeout=180, check=False,
                )  # fmt: skip
            except (OSError, subprocess.TimeoutExpired) as exc:
                pytest.fail(f"cannot run pip to download {SPEC_WHEEL}: {exc}", pytrace=False)
            downloaded = sorted(Path(tmp).glob("docker_compose-1.29.2-*.whl"))
            if done.returncode != 0 or not downloaded:
                pytest.fail(
                    f"could not download {SPEC_WHEEL} from PyPI, which ships the Compose "
                    f"JSON Schema this test validates against (is PyPI reachable?):\n"
                    f"{done.stderr.strip() or done.stdout.strip()}",
                    pytrace=False,
                )
            # Moved in whole: an interrupted download never leaves a broken wheel behind.
            target = SPEC_CACHE / downloaded[0].name
            shutil.move(str(downloaded[0]), target)
            wheels = [target]
    with zipfile.ZipFile(wheels[0]) as wheel:
        schema: dict[str, Any] = json.loads(wheel.read(SPEC_MEMBER))
    return schema


# --- (a) the Compose specification -----------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    validator = jsonschema.Draft7Validator(compose_spec())
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors
    )


def test_compose_spec_rejects_an_unknown_key() -> None:
    """The schema really is strict, so the test above means something."""
    validator = jsonschema.Draft7Validator(compose_spec())
    broken = {"services": {"gateway": {"image": "whplane:local", "comand": ["gateway"]}}}
    assert any("comand" in e.message for e in validator.iter_errors(broken))


# --- (b) commands, flags and environment variables -------------------------------------------


def dockerfile_entrypoint() -> list[str]:
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no exec-form ENTRYPOINT [...]"
    entrypoint: list[str] = json.loads(match.group(1))
    return entrypoint


def whplane_services() -> dict[str, dict[str, Any]]:
    """Services running the image built from our Dockerfile."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def argv(name: str, svc: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(console script, its arguments) that the service runs."""
    command = svc.get("command", [])
    assert isinstance(command, list), f"{name}: write command as a list, not a shell string"
    entrypoint = svc.get("entrypoint", dockerfile_entrypoint())
    if isinstance(entrypoint, str):
        entrypoint = [entrypoint]
    if len(entrypoint) == 1:
        return entrypoint[0], [str(a) for a in command]
    assert entrypoint[:2] == ["/bin/sh", "-c"] and len(entrypoint) == 4, (
        f"{name}: unexpected entrypoint {entrypoint}")
    wrapper = VAULT_WRAPPER.fullmatch(entrypoint[2])
    assert wrapper, f"{name}: the entrypoint script must be the Vault token wrapper"
    assert wrapper["var"] in vault_env(), f"{name}: whplane never reads {wrapper['var']}"
    assert wrapper["secret"] in secret_names(svc), (
        f"{name}: reads /run/secrets/{wrapper['secret']} but does not mount that secret")
    return wrapper["program"], [str(a) for a in command]


def secret_names(svc: Mapping[str, Any]) -> set[str]:
    names = set()
    for s in svc.get("secrets", []):
        names.add(s if isinstance(s, str) else s.get("target", s["source"]))
    return names


# typer 0.29 vendors click (typer._click), older typers use click itself: duck typing below.


def is_group(cmd: Any) -> bool:
    return hasattr(cmd, "list_commands")


def first_positional(group: Any, args: list[str]) -> int:
    """Index of the subcommand's name in args (after the group's own options)."""
    takes_value = {
        opt: not (p.is_flag or p.count)
        for p in group.params if p.param_type_name == "option"
        for opt in (*p.opts, *p.secondary_opts)
    }  # fmt: skip
    i = 0
    while i < len(args) and args[i].startswith("-"):
        flag = args[i].split("=", 1)[0]
        assert flag in takes_value, f"no option {flag} before the subcommand"
        i += 2 if takes_value[flag] and "=" not in args[i] else 1
    return i


def parse_cli(app: typer.Typer, prog: str, args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Parse `args` with the real CLI: (the subcommand path, the leaf command's parameters).

    click raises a usage error for an unknown command or option, a missing required option or a
    value of the wrong type; it comes out as AssertionError naming the problem.
    """
    cmd: Any = typer.main.get_command(app)
    ctx: Any = None
    path: list[str] = []
    line = " ".join([prog, *args])
    try:
        while is_group(cmd):
            i = first_positional(cmd, args)
            if i:
                ctx = cmd.make_context(prog, list(args[:i]), parent=ctx)
            assert i < len(args), f"{prog}: no subcommand in {args}"
            sub = cmd.get_command(ctx, args[i])
            assert sub is not None, f"{prog} has no command {args[i]!r}"
            path.append(args[i])
            prog, cmd, args = args[i], sub, args[i + 1 :]
        leaf = cmd.make_context(prog, list(args), parent=ctx)
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # not a click usage error
            raise
        raise AssertionError(f"`{line}`: {exc.format_message()}") from None
    return path, dict(leaf.params)


CLIS = {"whplane": whplane.app, "whctl": whctl.app}


def parsed_commands() -> Iterator[tuple[str, str, list[str], dict[str, Any]]]:
    for name, svc in whplane_services().items():
        program, args = argv(name, svc)
        assert program in CLIS, f"{name}: runs {program!r}, not whplane or whctl"
        try:
            path, params = parse_cli(CLIS[program], program, args)
        except AssertionError as exc:
            pytest.fail(f"{name}: {exc}", pytrace=False)
        yield name, program, path, params


class Recorder(dict[str, str]):
    """An environment that remembers which variables were looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


@cache
def vault_env() -> frozenset[str]:
    env = Recorder({"VAULT_ADDR": "http://vault:8200", "VAULT_TOKEN": "t"})
    assert VaultSettings.from_env(env) is not None
    return frozenset(env.read)


@cache
def etcd_env() -> frozenset[str]:
    env = Recorder({"UNRELATED": "1"})  # non-empty: from_url treats an empty mapping as none
    EtcdSettings.from_url("etcd://etcd:2379/whplane/", env)
    return frozenset(env.read)


@cache
def settings_env() -> frozenset[str]:
    fields = {*GatewaySettings.model_fields, *ControlPlaneSettings.model_fields}
    return frozenset(f"WH_{f.upper()}" for f in fields)


def allowed_env() -> frozenset[str]:
    return settings_env() | vault_env() | etcd_env()


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_the_readers_of_the_environment_are_found() -> None:
    """The introspection below sees what the code reads (guards the recorders themselves)."""
    assert {"VAULT_ADDR", "VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID", "VAULT_NAMESPACE",
            "WH_VAULT_MOUNT", "WH_VAULT_KV_VERSION"} <= vault_env()
    assert {"WH_ETCD_USERNAME", "WH_ETCD_PASSWORD"} <= etcd_env()
    assert {"WH_CONFIG", "WH_REDIS_URL", "WH_SECRET_TTL", "WH_STORE"} <= settings_env()


def test_there_are_the_expected_whplane_services() -> None:
    commands = {name: (program, path) for name, program, path, _ in parsed_commands()}
    assert commands["control-plane"] == ("whplane", ["control-plane"])
    gateways = [n for n, (_, path) in commands.items() if path == ["gateway"]]
    assert len(gateways) >= 2, "two gateways at least"
    images = {svc.get("image") for svc in whplane_services().values()}
    assert len(images) == 1, f"one image for every whplane service, not {images}"


def test_every_whplane_command_uses_only_existing_subcommands_and_flags() -> None:
    hosts = set(services())
    for name, _program, path, params in parsed_commands():
        for key in ("config", "store"):
            url = params.get(key)
            if isinstance(url, str) and url.startswith("etcd://"):
                etcd = EtcdSettings.from_url(url)
                unknown = {h for h, _ in etcd.endpoints} - hosts
                assert not unknown, f"{name}: --{key} names unknown hosts {unknown}"
        if path == ["control-plane"]:
            token_file = params.get("admin_token_file")
            assert token_file is not None, f"{name}: the admin token must come from a file"
            assert str(token_file).startswith("/run/secrets/"), f"{name}: not a Docker secret"


def test_secret_files_named_anywhere_are_mounted_and_declared() -> None:
    declared = set(compose().get("secrets", {}))
    for name, svc in services().items():
        mounted = secret_names(svc)
        assert mounted <= declared, f"{name}: undeclared secrets {mounted - declared}"
        text = json.dumps([svc.get("entrypoint"), svc.get("command")])
        used = set(re.findall(r"/run/secrets/([\w.-]+)", text))
        assert used <= mounted, f"{name}: uses secrets it does not mount: {used - mounted}"


def test_no_token_or_password_in_environment_or_argv() -> None:
    for name, svc in services().items():
        for key in environment(svc):
            assert not re.search(r"TOKEN|PASSWORD|SECRET_ID", key), (
                f"{name}: {key} in the environment; use a Docker secret file")
    for name, svc in whplane_services().items():
        for arg in svc.get("command", []):
            flag = str(arg).split("=", 1)[0]
            if flag.startswith("--") and re.search(r"token|password|secret", flag):
                assert flag.endswith("-file"), f"{name}: {flag} puts a secret on the command line"


def test_every_environment_variable_of_a_whplane_service_is_read_by_the_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, svc in whplane_services().items():
        env = environment(svc)
        program, args = argv(name, svc)
        allowed = allowed_env() if program == "whplane" else frozenset({"WHCTL_SERVER"})
        unknown = set(env) - allowed
        assert not unknown, f"{name}: nothing in {program} reads {sorted(unknown)}"
        # The values must be valid too: build the settings the way `whplane` does.
        for key in [k for k in os.environ if k.startswith(("WH_", "VAULT_"))]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        if program != "whplane":
            continue
        path, params = parse_cli(whplane.app, program, args)
        given = {k: v for k, v in params.items() if v is not None}
        if path == ["control-plane"]:
            ControlPlaneSettings(**given)
        elif path in (["gateway"], ["worker"]):
            GatewaySettings(**given)
            if "VAULT_ADDR" in env:  # the token itself comes from the wrapper, at run time
                assert VaultSettings.from_env({**env, "VAULT_TOKEN": "placeholder"})


def test_services_are_health_checked_and_wait_for_healthy_dependencies() -> None:
    all_services = services()
    for name, svc in all_services.items():
        one_shot = svc.get("restart") == "no"
        if not one_shot:
            assert svc.get("healthcheck", {}).get("test"), f"{name}: no health check"
        depends = svc.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dep, how in depends.items():
            assert dep in all_services, f"{name}: depends on unknown service {dep}"
            assert how.get("condition") == "service_healthy", f"{name} -> {dep}"
            assert all_services[dep].get("healthcheck"), f"{dep} has no health check"


def test_etcd_members_are_stock_servers() -> None:
    members = {n: s for n, s in services().items() if "coreos/etcd" in str(s.get("image"))}
    assert len(members) == 3
    for name, svc in members.items():
        flags = dict(a.split("=", 1) for a in svc["command"] if a.startswith("--") and "=" in a)
        assert flags["--name"] == name
        # Applies of any size fit etcd's default limits: nothing to raise.
        assert "--max-txn-ops" not in flags and "--max-request-bytes" not in flags, name
        assert "--auto-compaction-retention" in flags, name
        cluster = dict(m.split("=", 1) for m in flags["--initial-cluster"].split(","))
        assert set(cluster) == set(members), name


def test_redis_fsyncs_every_write() -> None:
    command = services()["redis"]["command"]
    text = " ".join(command)
    assert "--appendonly yes" in text and "--appendfsync always" in text
    assert any(v.endswith(":/data") for v in services()["redis"]["volumes"])


# --- (c) the Dockerfile ----------------------------------------------------------------------


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def dockerfile_instructions() -> list[str]:
    """Instructions with their continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_entrypoints_are_console_scripts() -> None:
    scripts = set(pyproject()["project"]["scripts"])
    assert dockerfile_entrypoint()[0] in scripts
    for name, svc in whplane_services().items():
        program, _ = argv(name, svc)
        assert program in scripts, f"{name}: {program} is not a console script"


def test_the_image_installs_the_project_with_its_modules_as_a_non_root_user() -> None:
    lines = dockerfile_instructions()
    installs = [line for line in lines if re.search(r"\bpip install\b", line)]
    # The modules' client libraries, and none of the test or launcher extras.
    assert installs and all(re.search(r"""pip install "?\.\[modules\]"?(\s|$)""", i)
                            for i in installs), installs
    assert lines[0].startswith(("FROM python:3.11-slim", "ARG PYTHON_IMAGE=python:3.11-slim"))
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_the_image_gets_every_package_and_nothing_else() -> None:
    project = pyproject()
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copies = " ".join(line for line in dockerfile_instructions() if line.startswith("COPY "))
    ignore = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore must be an allow-list: '*' first, then '!path'"
    for needed in [*(f"{p}/" for p in packages), project["project"]["readme"], "pyproject.toml"]:
        assert needed in copies, f"the Dockerfile does not COPY {needed}"
        assert f"!{needed}" in ignore, f".dockerignore keeps {needed} out of the context"
    assert not any(entry.startswith("!secrets") for entry in ignore)


def test_dockerfile_environment_is_read_by_the_code() -> None:
    envs = " ".join(line for line in dockerfile_instructions() if line.startswith("ENV "))
    names = set(re.findall(r"\b((?:WH|VAULT)_[A-Z0-9_]+)=", envs))
    assert names <= allowed_env(), names - allowed_env()


def test_the_modules_profile_runs_the_destination_systems() -> None:
    modules = {name for name, svc in services().items() if "modules" in svc.get("profiles", [])}
    assert modules == {"rabbitmq", "postgres", "mosquitto", "nats", "minio", "localstack"}
    for name in modules:
        svc = services()[name]
        assert "ports" not in svc, f"{name}: published outside the compose network"
