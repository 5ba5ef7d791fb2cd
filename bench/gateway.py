"""Ingest throughput: the gateway against the floor (a bare ASGI app doing the same HMAC check),
one uvicorn worker each, GitHub-signed requests driven by wrk on loopback.

    python -m bench.gateway [--seconds 10] [--connections 32] [--rounds 3]

Prints requests/s and p50/p99 latency for: floor, gateway sync `log`, gateway async
`redis_stream` (202 once in Redis; the delivery worker runs in another process), and sync `log`
behind the two stages that ask Redis on the way in (a rate limit, an idempotency header with a
new key each request; neither refuses anything here). They run in turn, `--rounds` times, and each figure is the median of its rounds: on a shared machine
the load moves within seconds, and a floor measured at a quiet moment against a gateway
measured at a busy one would make a ratio of the noise.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from cli.processes import GatewayProcess
from cli.servers import RedisServer, free_port

SECRET = "bench-secret"
BODY = json.dumps({"ref": "refs/heads/main", "commits": [{"id": "x" * 40}] * 5}).encode()


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int


def lua_script(path: Path, delivery_keys: bool = False) -> None:
    """wrk's request: the signed body; with `delivery_keys`, a new X-Delivery-Key each time."""
    sig = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY.decode())}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["X-Hub-Signature-256"] = "{sig}"\n'
        + ("n = 0\n"
           "request = function()\n"
           "  n = n + 1\n"
           '  wrk.headers["X-Delivery-Key"] = math.random(1, 1000000000) .. "-" .. n\n'
           "  return wrk.format()\n"
           "end\n" if delivery_keys else "")
    )


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def warm_up(url: str, script: Path, connections: int) -> None:
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", "-s", str(script), url],
                   capture_output=True, check=True)


def median(runs: list[Result]) -> Result:
    def mid(values: list[float]) -> float:
        return statistics.median(values)

    return Result(runs[0].name, mid([r.rps for r in runs]), mid([r.p50_ms for r in runs]),
                  mid([r.p99_ms for r in runs]), sum(r.non2xx for r in runs))


def run_wrk(name: str, url: str, script: Path, seconds: int, connections: int) -> Result:
    warm_up(url, script, connections)
    return measure(name, url, script, seconds, connections)


def measure(name: str, url: str, script: Path, seconds: int, connections: int) -> Result:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Lines of wrk's latency distribution: "50%" alone would also match "+/- Stdev" columns
    # such as "87.50%".
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Result(name, rps, p50, p99, int(bad.group(1)) if bad else 0)


def start_floor(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        env={**os.environ, "BENCH_SECRET": SECRET}, cwd=Path(__file__).parents[1],
    )
    for _ in range(100):
        try:
            httpx.post(f"http://127.0.0.1:{port}/", content=b"")
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("floor app did not start")


def config(tmp: Path, redis_url: str) -> Path:
    hooks = [
        {"apiVersion": "whplane/v1", "kind": "Connection", "metadata": {"name": "events"},
         "spec": {"type": "redis", "url": redis_url}},
        {"apiVersion": "whplane/v1", "kind": "Webhook",
         "metadata": {"name": "sync-log", "namespace": "bench"},
         "spec": {"verify": {"scheme": "github", "secret": "{$BENCH_SECRET}"},
                  "chain": {"steps": [{"module": "log"}]}}},
        {"apiVersion": "whplane/v1", "kind": "Webhook",
         "metadata": {"name": "async-stream", "namespace": "bench"},
         "spec": {"verify": {"scheme": "github", "secret": "{$BENCH_SECRET}"},
                  "delivery": {"mode": "async"},
                  "chain": {"steps": [{"module": "redis_stream", "connection": "events",
                                       "config": {"stream": "bench", "maxlen": 10000}}]}}},
        # The two stages that ask Redis on the way in (neither refuses anything here).
        {"apiVersion": "whplane/v1", "kind": "Webhook",
         "metadata": {"name": "rate-limited", "namespace": "bench"},
         "spec": {"verify": {"scheme": "github", "secret": "{$BENCH_SECRET}"},
                  "limits": {"rate_per_second": 1000000},
                  "chain": {"steps": [{"module": "log"}]}}},
        {"apiVersion": "whplane/v1", "kind": "Webhook",
         "metadata": {"name": "idempotent", "namespace": "bench"},
         "spec": {"verify": {"scheme": "github", "secret": "{$BENCH_SECRET}"},
                  "delivery": {"idempotency_header": "X-Delivery-Key"},
                  "chain": {"steps": [{"module": "log"}]}}},
    ]
    d = tmp / "config"
    d.mkdir()
    (d / "bench.yaml").write_text(yaml.safe_dump_all(hooks))
    return d


def main(seconds: int, connections: int, rounds: int = 3) -> list[Result]:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="whplane-bench-"))
    script, keyed = tmp / "post.lua", tmp / "post-keyed.lua"
    lua_script(script)
    lua_script(keyed, delivery_keys=True)
    with RedisServer() as redis:
        floor_port = free_port()
        floor = start_floor(floor_port)
        env = {"BENCH_SECRET": SECRET, "WH_LOG_LEVEL": "warning", "WH_REDIS_URL": redis.url,
               "WH_DELIVERY_WORKER": "false", "WH_MAX_BACKLOG": "100000000"}
        try:
            with GatewayProcess(f"file:{config(tmp, redis.url)}", env) as gw:
                hook = f"{gw.url}/webhook/bench"
                targets = [
                    ("floor (bare ASGI + HMAC)", f"http://127.0.0.1:{floor_port}/", script),
                    ("gateway sync log", f"{hook}/sync-log", script),
                    ("gateway async redis_stream", f"{hook}/async-stream", script),
                    ("gateway sync log + rate limit", f"{hook}/rate-limited", script),
                    ("gateway sync log + idempotency", f"{hook}/idempotent", keyed),
                ]
                for _, url, lua in targets:
                    warm_up(url, lua, connections)
                runs: dict[str, list[Result]] = {name: [] for name, _, _ in targets}
                for _ in range(rounds):
                    for name, url, lua in targets:
                        runs[name].append(measure(name, url, lua, seconds, connections))
        finally:
            floor.terminate()
            floor.wait()
    results = [median(r) for r in runs.values()]
    floor_rps = results[0].rps
    print(f"# ingest: wrk -t1 -c{connections} -d{seconds}s, {len(BODY)} B GitHub-signed bodies, "
          f"one uvicorn worker each; medians of {rounds} rounds run in turn")
    print(f"{'':32} {'req/s':>9} {'x floor':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for r in results:
        print(f"{r.name:32} {r.rps:9.0f} {r.rps / floor_rps:8.2f} {r.p50_ms:8.2f} "
              f"{r.p99_ms:8.2f} {r.non2xx:8d}")
    print("goals: sync log >= 0.60 x floor; async redis_stream >= 0.40 x floor")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    main(args.seconds, args.connections, args.rounds)
