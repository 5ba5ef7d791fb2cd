"""fleet_rollout: one apply reaches three gateways, `whctl rollout status` waits for all of them,
and a bad change is undone with `whctl rollout undo`."""

from __future__ import annotations

from pathlib import Path

from cli.processes import ControlPlaneProcess, GatewayProcess
from cli.servers import EtcdServer
from scenarios._kit import Story, json_list, revision_of, run

CONFIG = Path(__file__).parent / "config"
SENDER_SECRET = "orders-secret"
GW_ENV = {"ORDERS_SECRET": SENDER_SECRET, "ORDERS_SECRET_NEXT": "orders-secret-next"}
GATEWAYS = ("gw-a", "gw-b", "gw-c")


def tell(story: Story) -> None:
    story.step("Start etcd, a control plane and three gateways")
    etcd = story.server(EtcdServer())
    store = f"etcd://{etcd.endpoint}/whplane/"
    cp = story.control_plane(store)
    gws = [story.gateway(store, GW_ENV, gateway_id=name, start=False) for name in GATEWAYS]
    story.start_all(gws)
    story.say(f"gateways {', '.join(f'{g.gateway_id} ({g.url})' for g in gws)}")

    story.step("Apply the shop's config and wait until every gateway serves it")
    good = _apply(story, cp, "v1")
    _rollout(story, cp, good)
    r = story.whctl(cp, "gateways", "-o", "json", quiet=True)
    story.whctl(cp, "gateways")
    listed = {g["id"]: g["revision"] for g in json_list(r.stdout)}
    story.check(all(listed.get(name) == good for name in GATEWAYS),
                f"whctl gateways lists all three at revision {good}", listed)
    _traffic(story, gws, 200, good)

    story.step("Apply a bad change: the secret switched before the sender was told")
    bad = _apply(story, cp, "v2-bad")
    _rollout(story, cp, bad)
    _traffic(story, gws, 401, bad)

    story.step("Undo the shop's last change")
    story.whctl(cp, "rollout", "history", "-n", "shop")
    r = story.whctl(cp, "rollout", "undo", "-n", "shop", "-m", "sender still on the old secret")
    story.require(r.returncode == 0, "rollout undo accepted", r.returncode)
    undone = revision_of(r.stdout)
    story.check(undone > bad, f"the undo is a new revision ({undone}), history moves forward")
    _rollout(story, cp, undone)
    _traffic(story, gws, 200, undone)
    r = story.whctl(cp, "diff", "-f", str(CONFIG / "v1"))
    story.check(r.returncode == 0, "the store holds the good config again (diff: no difference)",
                r.returncode)


def _apply(story: Story, cp: ControlPlaneProcess, version: str) -> int:
    r = story.whctl(cp, "apply", "-f", str(CONFIG / version), "-m", f"shop config {version}")
    story.require(r.returncode == 0, f"{version} applied", r.returncode)
    return revision_of(r.stdout)


def _rollout(story: Story, cp: ControlPlaneProcess, revision: int) -> None:
    r = story.whctl(cp, "rollout", "status", "--revision", str(revision), "--timeout", "30s")
    story.require(r.returncode == 0, f"all three gateways applied revision {revision}",
                  r.returncode)


def _traffic(story: Story, gws: list[GatewayProcess], expected: int, revision: int) -> None:
    """The sender (still signing with the original secret) posts once to each gateway."""
    seen = []
    for gw in gws:
        r = story.post(f"{gw.url}/webhook/shop/orders", SENDER_SECRET)
        seen.append((gw.gateway_id, r.status_code, int(r.headers.get("x-whplane-revision", -1))))
    story.say("sender -> " + ", ".join(f"{name}: {code} (rev {rev})" for name, code, rev in seen))
    story.check(all(code == expected for _, code, _ in seen),
                f"every gateway answers {expected}", seen)
    story.check(all(rev == revision for _, _, rev in seen),
                f"every answer carries X-Whplane-Revision {revision}", seen)


if __name__ == "__main__":
    run("fleet_rollout: three gateways, rollout status and undo", tell)
