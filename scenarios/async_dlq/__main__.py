"""async_dlq: async webhooks are acknowledged (202) once queued in Redis; a gateway SIGKILLed
with deliveries pending loses none of them (a `whplane worker` finishes the job); deliveries to
a failing destination are retried, dead-lettered, and replayed once it is fixed."""

from __future__ import annotations

import json
from pathlib import Path

from cli.servers import RedisServer
from data_plane.redis_keys import STREAM, dead_letters_key
from scenarios._kit import Story, json_list, run, wait_for

CONFIG = Path(__file__).parent / "config"
SECRET = "acme-secret"
ORDERS = 20
INVOICES = 2


def tell(story: Story) -> None:
    story.step("Start Redis (append-only file on, as in production), two destinations, a gateway")
    redis_server = story.server(RedisServer(extra_args=("--appendonly", "yes")))
    redis = redis_server.client()
    warehouse = story.sink(delay_s=0.75)
    billing = story.sink(status=500)
    story.say(f"warehouse {warehouse.url}: answers 200 after 0.75 s (slow)")
    story.say(f"billing   {billing.url}: answers 500 (broken)")
    env = {"ACME_SECRET": SECRET, "WAREHOUSE_URL": warehouse.url, "BILLING_URL": billing.url,
           "WH_REDIS_URL": redis_server.url,
           # Reclaim a dead consumer's deliveries after 1 s of silence (default 30 s).
           "WH_CLAIM_IDLE_S": "1"}
    config = f"file:{CONFIG}"
    gw = story.gateway(config, {**env, "WH_WORKER_CONCURRENCY": "4"}, gateway_id="gw-async")

    story.step(f"Send {ORDERS} order webhooks (async delivery to the slow warehouse)")
    accepted: list[str] = []
    for i in range(ORDERS):
        r = story.post(f"{gw.url}/webhook/acme/orders", SECRET, json.dumps({"order": i}).encode())
        if r.status_code == 202:
            accepted.append(r.json()["id"])
    story.require(len(accepted) == ORDERS, f"all {ORDERS} answered 202 (queued in Redis)",
                  len(accepted))
    wait_for(lambda: warehouse.received, timeout=10)

    story.step("SIGKILL the gateway while deliveries are still pending")
    gw.kill()
    at_kill = len(warehouse.delivered_ids() & set(accepted))
    story.say(f"at the kill: {at_kill} of {ORDERS} delivered, the rest queued or in flight")
    story.require(at_kill < ORDERS, "deliveries were pending when the gateway died", at_kill)

    story.step("Start a `whplane worker` on the same Redis")
    worker = story.gateway(config, env, gateway_id="worker-1", command="worker")
    wait_for(lambda: set(accepted) <= warehouse.delivered_ids(), timeout=30)
    lost = set(accepted) - warehouse.delivered_ids()
    story.check(not lost, f"all {ORDERS} accepted deliveries arrived: none lost",
                f"{len(lost)} missing")
    extra = len(warehouse.received) - len(set(accepted) & warehouse.delivered_ids())
    story.say(f"the warehouse got {len(warehouse.received)} requests for {ORDERS} deliveries "
              f"({extra} repeated: at least once, the ones cut off by the kill)")

    story.step(f"Restart the gateway; send {INVOICES} invoice webhooks to the broken billing")
    gw.start()
    invoices: list[str] = []
    for i in range(INVOICES):
        r = story.post(f"{gw.url}/webhook/acme/invoices", SECRET,
                       json.dumps({"invoice": i}).encode())
        if r.status_code == 202:
            invoices.append(r.json()["id"])
    story.require(len(invoices) == INVOICES, f"{INVOICES} answered 202", len(invoices))
    dead_key = dead_letters_key(STREAM)
    dead = wait_for(lambda: redis.xlen(dead_key) >= INVOICES, timeout=20)
    story.require(dead, "both were retried, then dead-lettered", redis.xlen(dead_key))
    tries = [billing.attempts(i) for i in invoices]
    story.check(all(n == 2 for n in tries), "each was tried twice (retry.attempts: 2)", tries)
    redis_env = {"WH_REDIS_URL": redis_server.url}
    story.whplane("dlq", "list", env=redis_env)
    listed = story.whplane("dlq", "list", "-o", "json", env=redis_env, quiet=True)
    letters = json_list(listed.stdout)
    story.check(sorted(e["delivery"] for e in letters) == sorted(invoices)
                and all("500" in e["last_error"] for e in letters),
                "whplane dlq list shows both invoices, failed with HTTP 500", letters)

    story.step("Fix billing, replay the dead letters")
    billing.status = 200
    story.say("billing now answers 200")
    replayed = story.whplane("dlq", "replay", "--all", env=redis_env)
    story.check(replayed.returncode == 0, "whplane dlq replay --all", replayed.returncode)
    arrived = wait_for(lambda: set(invoices) <= billing.delivered_ids(), timeout=20)
    story.check(arrived, f"both invoices arrived at billing ({sorted(invoices)})",
                billing.delivered_ids())
    story.check(redis.xlen(dead_key) == 0, "the dead-letter queue is empty")
    story.check(worker.proc is not None and worker.proc.poll() is None,
                "the worker is still running")


if __name__ == "__main__":
    run("async_dlq: no delivery lost to a SIGKILL; dead letters replayed", tell)
