"""vault_rotation: a webhook secret kept in OpenBao is rotated with zero downtime (both secrets
accepted, then only the new one), then rotated in place in Vault and picked up within a couple
of TTLs; when OpenBao goes away, secrets already resolved keep working."""

from __future__ import annotations

import time
from pathlib import Path

from cli.processes import GatewayProcess
from cli.servers import VaultServer
from scenarios._kit import Story, run, wait_for, write_atomically

CONFIG = Path(__file__).parent / "config"
OLD = "github-secret-v1"
NEW = "github-secret-v2"
REPLACED = "github-secret-v2-replaced"
TTL_S = 1.0


def tell(story: Story) -> None:
    story.step("Start OpenBao, store the webhook secret in it, start a gateway")
    vault = story.server(VaultServer())
    kv = vault.client().secrets.kv.v2

    def put_secret(path: str, value: str) -> None:
        kv.create_or_update_secret(path=path, secret={"secret": value}, mount_point="secret")

    put_secret("acme/github-v1", OLD)
    story.say(f"OpenBao at {vault.addr}: secret/acme/github-v1 holds the current secret")
    config_dir = story.tempdir("vault-config")
    config = config_dir / "acme.yaml"
    write_atomically(config, (CONFIG / "1-before.yaml").read_text())
    gw = story.gateway(f"file:{config_dir}", {
        "VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token, "WH_SECRET_TTL": str(TTL_S)})
    pid = gw.proc.pid if gw.proc else None
    story.say(f"gateway on file:{config_dir} with WH_SECRET_TTL={TTL_S:g}, pid {pid}")
    hook = f"{gw.url}/webhook/acme/github-push"
    r = story.post(hook, OLD)
    story.require(r.status_code == 200, "a webhook signed with the current secret: 200",
                  r.status_code)
    story.check(OLD not in story.http.get(f"{gw.url}/status").text,
                "/status never shows the secret's value")

    story.step("Rotation, part 1: write the new secret to Vault and list both in the config")
    put_secret("acme/github-v2", NEW)
    story.say("secret/acme/github-v2 written; config: secret: [v2 (new), v1 (old)]")
    _edit(story, gw, config, "2-both.yaml")
    story.check(story.post(hook, NEW).status_code == 200, "the new secret is accepted (200)")
    story.check(story.post(hook, OLD).status_code == 200,
                "the old secret is still accepted (200): senders switch at their own pace")

    story.step("Rotation, part 2: every sender switched; remove the old secret from the config")
    _edit(story, gw, config, "3-after.yaml")
    story.check(story.post(hook, NEW).status_code == 200, "the new secret is accepted (200)")
    story.check(story.post(hook, OLD).status_code == 401, "the old secret is refused (401)")

    story.step("Rotate in place: overwrite secret/acme/github-v2 in Vault, config untouched")
    revision = story.status(gw)["revision"]
    put_secret("acme/github-v2", REPLACED)
    t0 = time.monotonic()
    accepted = wait_for(lambda: story.post(hook, REPLACED).status_code == 200,
                        timeout=10 * TTL_S, interval=0.1)
    took = time.monotonic() - t0
    story.say(f"the gateway accepted the new value after {took:.1f} s")
    # A refresh every TTL, plus slack for a loaded machine.
    story.check(accepted and took < 3 * TTL_S + 2,
                f"picked up within a couple of TTLs ({TTL_S:g} s each), no restart", took)
    story.check(story.post(hook, NEW).status_code == 401, "the overwritten value is refused (401)")
    story.check(story.status(gw)["revision"] == revision,
                f"config revision unchanged ({revision}): only the secret moved")

    story.step("OpenBao goes away")
    vault.stop()
    story.say("OpenBao stopped")
    down = story.wait_status(gw, lambda st: st["vault"].get("reachable") is False,
                             timeout=10 * TTL_S)
    story.check(down is not None, "/status reports Vault unreachable")
    if down is not None:
        story.say(f"/status vault: reachable={down['vault']['reachable']}, "
                  f"last_error={down['vault']['last_error']!r}")
    time.sleep(2 * TTL_S)  # a few more refreshes fail meanwhile
    r = story.post(hook, REPLACED)
    story.check(r.status_code == 200,
                "the secret resolved before the outage keeps working (200)", r.status_code)
    story.check(story.post(hook, NEW).status_code == 401,
                "and a wrong signature is still refused (401)")
    ready = story.http.get(f"{gw.url}/readyz")
    story.check(ready.status_code == 200, "the gateway stays ready", ready.status_code)
    story.check(gw.proc is not None and gw.proc.pid == pid and gw.proc.poll() is None,
                f"one gateway process (pid {pid}) through the whole story: never restarted")


def _edit(story: Story, gw: GatewayProcess, config: Path, version: str) -> None:
    before = story.status(gw)["revision"]
    write_atomically(config, (CONFIG / version).read_text())
    after = story.wait_status(gw, lambda st: st["revision"] > before, timeout=15)
    story.require(after is not None, f"the gateway loaded {version} (no restart)")
    assert after is not None
    story.check(not after["errors"], "no config errors", after["errors"])


if __name__ == "__main__":
    run("vault_rotation: secrets rotated in OpenBao without downtime", tell)
