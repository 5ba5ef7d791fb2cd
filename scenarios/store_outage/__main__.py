"""store_outage: etcd goes down; the gateways keep serving, one of them is even restarted during
the outage and comes back from its on-disk last good config; when etcd returns, a new apply
reaches both."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.processes import ControlPlaneProcess, GatewayProcess
from cli.servers import EtcdServer
from providers.last_good import LastGood
from scenarios._kit import Story, json_list, revision_of, run, wait_for

CONFIG = Path(__file__).parent / "config"
SECRET = "payments-secret"
GATEWAYS = ("gw-a", "gw-b")


def tell(story: Story) -> None:
    story.step("Start etcd, a control plane and two gateways, each with its own state dir")
    etcd = story.server(EtcdServer())
    store = f"etcd://{etcd.endpoint}/whplane/"
    cp = story.control_plane(store)
    gws, state_dirs = [], []
    for name in GATEWAYS:
        state = story.tempdir(f"state-{name}")
        env = {"PAYMENTS_SECRET": SECRET, "WH_STATE_DIR": str(state)}
        gws.append(story.gateway(store, env, gateway_id=name, start=False))
        state_dirs.append(state)
        story.say(f"{name}: WH_STATE_DIR={state}")
    story.start_all(gws)
    gw_b, gw_b_state = gws[1], state_dirs[1]

    story.step("Apply the payments config and roll it out")
    r = story.whctl(cp, "apply", "-f", str(CONFIG / "v1"))
    story.require(r.returncode == 0, "v1 applied", r.returncode)
    good = revision_of(r.stdout)
    r = story.whctl(cp, "rollout", "status", "--revision", str(good), "--timeout", "30s")
    story.require(r.returncode == 0, f"both gateways serve revision {good}", r.returncode)
    saved = wait_for(lambda: _last_good(gw_b_state, good), timeout=10)
    story.require(saved is not None, f"gw-b saved revision {good} as its last good config")
    assert saved is not None
    story.say(f"gw-b: {saved[0].name}: revision {good}, {saved[1]} resources, "
              "references unresolved (no secret on disk)")

    story.step("etcd goes down")
    etcd.stop()
    story.say("etcd stopped")
    for gw in gws:
        down = story.wait_status(gw, _provider_is("disconnected"), timeout=15)
        story.check(down is not None, f"{gw.gateway_id} /status: provider disconnected")
        if down is not None:
            story.say(f"{gw.gateway_id}: {down['provider']['last_error']}")
    _serve(story, gws, "charges", good)
    r = story.whctl(cp, "apply", "-f", str(CONFIG / "v2"))
    story.check(r.returncode == 1 and "unavailable" in r.stderr,
                "an apply during the outage is refused, saying why (exit 1)", r.returncode)

    story.step("Restart gw-b while etcd is still down")
    gw_b.stop()
    story.say("gw-b stopped; starting it again with the same WH_STATE_DIR")
    gw_b.start()
    st = story.status(gw_b)
    story.say(f"gw-b /status: ready={st['ready']}, revision={st['revision']}, "
              f"started_from_last_good={st['started_from_last_good']}, "
              f"provider={st['provider']['state']}")
    story.check(st["started_from_last_good"] and st["revision"] == good,
                f"gw-b started from its last good config (revision {good})")
    story.check(st["provider"]["state"] != "connected", "etcd is still unreachable for it")
    _serve(story, [gw_b], "charges", good)

    story.step("etcd comes back; apply a change")
    etcd.start()
    story.say("etcd started again (same data directory)")
    # Each gateway retries with jittered exponential backoff capped at 10 s, so noticing that
    # etcd is back can take that long.
    for gw in gws:
        up = story.wait_status(gw, _provider_is("connected"), timeout=30)
        story.check(up is not None, f"{gw.gateway_id} reconnected to etcd")
    # The control plane's etcd client may still refuse for about a second after etcd is back
    # (gRPC's reconnect backoff), so an operator would retry; so does the story.
    listed = wait_for(lambda: _registered(story, cp), timeout=20, interval=0.3)
    story.check(listed,
                "the control plane reaches etcd again; both gateways re-registered", listed)
    story.whctl(cp, "gateways")
    r = story.whctl(cp, "apply", "-f", str(CONFIG / "v2"))
    story.require(r.returncode == 0, "v2 applied", r.returncode)
    new = revision_of(r.stdout)
    r = story.whctl(cp, "rollout", "status", "--revision", str(new), "--timeout", "30s")
    story.check(r.returncode == 0, f"both gateways applied revision {new}", r.returncode)
    _serve(story, gws, "refunds", new)


def _serve(story: Story, gws: list[GatewayProcess], webhook: str, revision: int) -> None:
    for gw in gws:
        resp = story.post(f"{gw.url}/webhook/payments/{webhook}", SECRET)
        rev = resp.headers.get("x-whplane-revision")
        story.check(resp.status_code == 200 and rev == str(revision),
                    f"{gw.gateway_id}: POST /webhook/payments/{webhook} -> 200 (revision {rev})",
                    (resp.status_code, rev))


def _registered(story: Story, cp: ControlPlaneProcess) -> bool:
    """True once the control plane reads etcd again and lists both gateways as live."""
    r = story.whctl(cp, "gateways", "-o", "json", quiet=True)
    live = {g.get("id") for g in json_list(r.stdout) if g.get("live")}
    return r.returncode == 0 and live == set(GATEWAYS)


def _provider_is(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: bool(status["provider"]["state"] == state)


def _last_good(state_dir: Path, revision: int) -> tuple[Path, int] | None:
    """(file, number of resources) once the gateway's last good file holds `revision`."""
    for path in state_dir.glob("last-good-*.jsonl"):
        lines = path.read_text().splitlines()
        if not lines:
            continue
        # Read back the way a restarting gateway does: the base and its committed journal.
        saved = LastGood(path).read(json.loads(lines[0]).get("source", ""))
        if saved is not None and saved.revision == revision:
            return path, len(saved.puts)
    return None


if __name__ == "__main__":
    run("store_outage: etcd down, gateways keep serving", tell)
