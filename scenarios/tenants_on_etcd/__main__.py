"""tenants_on_etcd: two tenants share one control plane, one etcd, one OpenBao and one gateway;
each manages its own namespace with its own token and cannot touch the other's."""

from __future__ import annotations

from pathlib import Path

from cli.servers import EtcdServer, VaultServer
from scenarios._kit import Story, json_list, load_docs, revision_of, run

CONFIG = Path(__file__).parent / "config"
PREFIX = "/whplane/"
ACME_SECRET = "acme-github-secret"
GLOBEX_SECRET = "globex-github-secret"


def tell(story: Story) -> None:
    story.step("Start etcd, OpenBao, a control plane and a gateway")
    etcd = story.server(EtcdServer())
    vault = story.server(VaultServer())
    kv = vault.client().secrets.kv.v2
    for tenant, secret in (("acme", ACME_SECRET), ("globex", GLOBEX_SECRET)):
        kv.create_or_update_secret(path=f"{tenant}/github", secret={"webhook_secret": secret},
                                   mount_point="secret")
    story.say("each tenant's GitHub secret is in Vault at secret/<tenant>/github")
    store = f"etcd://{etcd.endpoint}{PREFIX}"
    cp = story.control_plane(store)
    gw = story.gateway(store, {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token},
                       gateway_id="gw-shared")
    story.say(f"store {store}; control plane {cp.url}; gateway {gw.url}")

    story.step("The admin creates the namespaces and one token per tenant")
    r = story.whctl(cp, "apply", "-f", str(CONFIG / "namespaces.yaml"))
    story.require(r.returncode == 0, "namespaces acme and globex created")
    tokens: dict[str, str] = {}
    for tenant in ("acme", "globex"):
        r = story.whctl(cp, "tokens", "create", "--namespace", tenant, quiet=True)
        token = r.stdout.strip()
        story.say(f"$ whctl tokens create --namespace {tenant}  -> a token (not shown), "
                  "handed to the tenant")
        story.require(r.returncode == 0 and token.startswith("whp_") and "\n" not in token,
                      f"{tenant}'s token printed alone on stdout", r.stderr)
        tokens[tenant] = token

    story.step("Each tenant applies its own webhooks with its own token (WHCTL_TOKEN)")
    r = story.whctl(cp, "apply", "-f", str(CONFIG / "acme.yaml"), token=tokens["acme"])
    story.check(r.returncode == 0, "acme applied acme.yaml", r.returncode)
    r = story.whctl(cp, "apply", "-f", str(CONFIG / "globex.yaml"), "-o", "json",
                    token=tokens["globex"])
    story.require(r.returncode == 0, "globex applied globex.yaml", r.returncode)
    revision = revision_of(r.stdout)

    story.step("acme's token is refused on globex's namespace")
    r = story.whctl(cp, "apply", "-f", str(CONFIG / "globex.yaml"), token=tokens["acme"])
    story.check(r.returncode == 1 and "may not" in r.stderr,
                "whctl: acme may not write globex's webhooks (exit 1)", r.returncode)
    globex_docs = load_docs(CONFIG / "globex.yaml")
    answer = story.http.post(f"{cp.url}/v1/apply", json={"resources": globex_docs},
                             headers={"authorization": f"Bearer {tokens['acme']}"})
    story.say(f"POST /v1/apply (globex's documents, acme's token) -> {answer.status_code}")
    story.check(answer.status_code == 403, "the API answers 403 Forbidden", answer.text)
    r = story.whctl(cp, "get", "webhooks", "github-push", "-n", "globex", token=tokens["acme"])
    story.check(r.returncode == 1 and "may not" in r.stderr,
                "acme may not read globex's webhook", r.returncode)
    r = story.whctl(cp, "rollout", "undo", "-n", "globex", token=tokens["acme"])
    story.check(r.returncode == 1 and "may not" in r.stderr,
                "acme may not roll back globex", r.returncode)
    r = story.whctl(cp, "apply", "-f", str(CONFIG / "acme-borrowing.yaml"),
                    token=tokens["acme"])
    story.check(r.returncode == 1 and "vault" in r.stderr.lower(),
                "acme may not point its own webhook at globex's secret in Vault", r.returncode)
    r = story.whctl(cp, "get", "webhooks", "-o", "json", token=tokens["acme"], quiet=True)
    story.say("$ whctl get webhooks -o json (tenant token)")
    seen = sorted(f"{d['metadata']['namespace']}/{d['metadata']['name']}"
                  for d in json_list(r.stdout))
    story.say(f"acme sees: {', '.join(seen) or 'nothing'}")
    story.check(seen == ["acme/github-push"], "acme lists only its own webhooks", seen)

    story.step("In etcd, each tenant's resources live under its own prefix")
    keys = etcd.etcdctl("get", f"{PREFIX}resources/", "--prefix", "--keys-only").split()
    story.show("\n".join(keys))
    story.check(f"{PREFIX}resources/acme/Webhook/github-push" in keys
                and f"{PREFIX}resources/globex/Webhook/github-push" in keys
                and f"{PREFIX}resources/globex/Webhook/deploys" in keys,
                "resources/acme/... and resources/globex/... hold each tenant's webhooks")

    story.step(f"Wait until the gateway serves revision {revision}")
    r = story.whctl(cp, "rollout", "status", "--revision", str(revision), "--timeout", "20s")
    story.require(r.returncode == 0, f"the gateway applied revision {revision}", r.returncode)
    counts = story.status(gw)["namespaces"]
    story.say(f"gateway /status namespaces: {counts}")
    story.check(counts == {"acme": 1, "globex": 2}, "one gateway serves both tenants", counts)

    story.step("Webhooks reach each tenant's endpoints, each verified with its own secret")
    for ns, secret in (("acme", ACME_SECRET), ("globex", GLOBEX_SECRET)):
        resp = story.post(f"{gw.url}/webhook/{ns}/github-push", secret)
        story.check(resp.status_code == 200, f"POST /webhook/{ns}/github-push -> 200",
                    resp.status_code)
    resp = story.post(f"{gw.url}/webhook/globex/github-push", ACME_SECRET)
    story.check(resp.status_code == 401, "acme's secret does not open globex's webhook (401)",
                resp.status_code)

    story.step("Unknown namespace and unknown name look exactly the same from outside")
    unknown_ns = story.post(f"{gw.url}/webhook/initech/github-push", ACME_SECRET)
    unknown_name = story.post(f"{gw.url}/webhook/acme/deploys", ACME_SECRET)
    story.say(f"/webhook/initech/github-push -> {unknown_ns.status_code} {unknown_ns.text}")
    story.say(f"/webhook/acme/deploys        -> {unknown_name.status_code} {unknown_name.text}")
    story.check(unknown_ns.status_code == unknown_name.status_code == 404,
                "both answer 404", (unknown_ns.status_code, unknown_name.status_code))
    story.check(unknown_ns.content == unknown_name.content,
                "with identical bodies: no way to probe which namespaces exist")


if __name__ == "__main__":
    run("tenants_on_etcd: namespaces, tokens and isolation on etcd", tell)
