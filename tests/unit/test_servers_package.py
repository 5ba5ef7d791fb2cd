"""The launcher package: one module per server, public names where they always were."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cli.servers
from tests.conftest import missing_system

PACKAGE = Path(cli.servers.__file__).parent


def test_public_names_stay_importable_from_the_package() -> None:
    for name in ("EtcdServer", "EtcdCluster", "VaultServer", "RedisServer", "MotoServer",
                 "CoilmqServer", "TansuBroker", "free_port", "find_binary", "LOOPBACK",
                 "ServerError", "ServerStartError", "BinaryNotFoundError", "die_with_parent_hook"):
        assert hasattr(cli.servers, name), name
    assert sorted(cli.servers.__all__) == sorted(set(cli.servers.__all__))


def test_one_module_per_server() -> None:
    for module, cls in (("etcd", "EtcdServer"), ("openbao", "VaultServer"),
                        ("redis", "RedisServer"), ("moto", "MotoServer"),
                        ("coilmq", "CoilmqServer"), ("tansu", "TansuBroker")):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        assert cls in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}


def test_no_module_calls_another_ones_private_methods() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                private = node.func.attr.startswith("_") and not node.func.attr.startswith("__")
                allowed = ((isinstance(owner, ast.Name) and owner.id in ("self", "os"))  # os._exit
                           # An override extending its base class's hook.
                           or (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name)
                               and owner.func.id == "super"))
                assert not (private and not allowed), (
                    f"{path.name}:{node.lineno} calls {node.func.attr}"
                )


def test_etcd_range_end_comes_from_the_config_layer() -> None:
    from cli.servers import etcd
    from providers.etcd_conn import prefix_range_end

    assert etcd.prefix_range_end is prefix_range_end
    for path in PACKAGE.glob("*.py"):
        assert "def _prefix_end" not in path.read_text()


def test_missing_system_skips_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install it"):
        missing_system("no thing: install it")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        missing_system("no thing: install it")
