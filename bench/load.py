"""The load generator of `bench service` and `bench cache`: a closed loop of HTTP clients.

Runs as its own process (`python -m bench.load < spec.json > result.json`) so that the client's
CPU work is not the server's: each of `concurrency` workers posts an image, waits for the
answer, and posts the next one. A level counts the answers completed inside its window (after
a warm-up, until `duration_s` has passed and `min_done` have completed, at most `max_s`), and
reads the server's batch-size histogram at both ends of the window, and (given `server_pid`) the
CPU time of the server's processes. Each worker holds one keep-alive connection and writes its
requests as raw HTTP/1.1 (`Connection`): a few microseconds of client CPU per request, where an
httpx client takes about a millisecond, which on a small machine the server would miss. With
`paths` (a list) the k-th request goes to paths[k % len(paths)] with bodies[k % len(bodies)],
e.g. cycling styles.
`trace` adds every answer of a level as [start, end, status] (perf_counter: CLOCK_MONOTONIC, the
same clock in every process on Linux), and a level also ends once the file `until` exists: what
`bench live` uses to line answers up with changes it makes meanwhile.
With `rounds` > 1 the levels are visited again, in reverse order every other round (1 2 4 4 2
1 ...), and each level's windows are pooled: a drift of the machine's speed during the sweep
then weighs on every level alike instead of on the last ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    a = np.asarray(values) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def histogram(text: str, name: str) -> dict[str, dict[str, float]]:
    """model -> {le: cumulative count, "sum": ..., "count": ...} for histogram `name`."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for s in family.samples:
            entry = out.setdefault(s.labels.get("model", ""), {})
            if s.name.endswith("_bucket"):
                entry[s.labels["le"]] = s.value
            elif s.name.endswith("_sum"):
                entry["sum"] = s.value
            elif s.name.endswith("_count"):
                entry["count"] = s.value
    return out


def counter(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name)


def batch_sizes(before: str, after: str) -> dict:
    """Forward passes per batch size between two scrapes of /metrics, over all models:
    bucket label -> count ("1", "2", "3", "4", "5-6", "7-8", ...), images, forward seconds."""
    h0, h1 = histogram(before, "service_batch_size"), histogram(after, "service_batch_size")
    f0, f1 = (histogram(before, "service_forward_seconds"),
              histogram(after, "service_forward_seconds"))
    dist: defaultdict[str, float] = defaultdict(float)
    batches = images = forward_s = 0.0
    for model, cur in h1.items():
        old = h0.get(model, {})
        prev_le, prev_count = 0.0, 0.0
        for le in sorted((k for k in cur if k not in ("sum", "count", "+Inf")), key=float):
            count = cur[le] - old.get(le, 0.0)
            lo, hi = int(prev_le) + 1, int(float(le))
            label = str(hi) if lo == hi else f"{lo}-{hi}"
            if count - prev_count > 0:
                dist[label] += count - prev_count
            prev_le, prev_count = float(le), count
        batches += cur.get("count", 0.0) - old.get("count", 0.0)
        images += cur.get("sum", 0.0) - old.get("sum", 0.0)
        forward_s += f1.get(model, {}).get("sum", 0.0) - f0.get(model, {}).get("sum", 0.0)
    return {"batches": dist, "forward_passes": batches, "images": images,
            "forward_s": forward_s,
            "singleflight_shared": counter(after, "service_singleflight_shared_total")
            - counter(before, "service_singleflight_shared_total")}


def summarize(concurrency: int, windows: list[dict]) -> dict:
    """One level's row from its windows (one per round): throughput over their total time,
    latency percentiles over all their answers, the batch sizes of all of them."""
    ok = [lat for w in windows for lat, st in w["inside"] if st == 200]
    statuses = Counter(str(st) for w in windows for _, st in w["inside"])
    seconds = sum(w["window_s"] for w in windows)
    completed = sum(len(w["inside"]) for w in windows)
    dist: Counter[str] = Counter()
    for w in windows:
        dist.update(w["batches"]["batches"])
    passes, images, forward_s, shared = (sum(w["batches"][k] for w in windows) for k in (
        "forward_passes", "images", "forward_s", "singleflight_shared"))
    return {"concurrency": concurrency, "window_s": seconds, "rounds": len(windows),
            "completed": completed, "throughput_per_s": len(ok) / seconds,
            "round_throughputs": [sum(1 for _, st in w["inside"] if st == 200) / w["window_s"]
                                  for w in windows],
            **percentiles(ok), "errors": completed - len(ok), "statuses": dict(statuses),
            "errors_total": sum(w["errors_total"] for w in windows),
            "batches": dict(dist), "forward_passes": passes,
            "mean_batch": images / passes if passes else None,
            "mean_forward_ms": 1000 * forward_s / passes if passes else None,
            "singleflight_shared": shared, **cpu_per_request(windows, completed),
            **({"trace": [r for w in windows for r in w["trace"]]}
               if all("trace" in w for w in windows) else {})}


def cpu_per_request(windows: list[dict], completed: int) -> dict[str, float]:
    """CPU milliseconds per answer of the client and (when measured) the server."""
    return {f"{who}_cpu_ms_per_request": 1000 * sum(w["cpu_s"][who] for w in windows)
            / max(1, completed)
            for who in ("client", "server") if all(who in w["cpu_s"] for w in windows)}


class Connection:
    """One keep-alive HTTP/1.1 connection posting bodies; reconnects after an error or a
    `Connection: close`. Only what the service sends is read: Content-Length bodies."""

    def __init__(self, url: str, timeout_s: float) -> None:
        address = httpx.URL(url)
        self.host, self.port = address.host, address.port or 80
        self.timeout_s = timeout_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes, content_type: str) -> object:
        """The status code, or the name of the error."""
        try:
            return await asyncio.wait_for(self._post(path, body, content_type), self.timeout_s)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError) as e:
            self.close()
            return type(e).__name__

    async def _post(self, path: str, body: bytes, content_type: str) -> int:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: "
                     f"{content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
        status = int(head[0].split()[1])
        fields = dict(line.split(":", 1) for line in head[1:] if ":" in line)
        await reader.readexactly(int(fields.get("content-length", 0)))
        if fields.get("connection", "").strip() == "close":
            self.close()
        return status

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and every process under it; 0 for one gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(process_cpu_s(int(c)) for c in children)


async def run_window(client: httpx.AsyncClient, spec: dict, bodies: list[bytes],
                     concurrency: int) -> dict:
    warmup_s, duration_s = spec["warmup_s"], spec["duration_s"]
    max_s, min_done = spec["max_s"], max(spec["min_done"], 2 * concurrency)
    content_type = spec.get("content_type", "image/png")
    paths = spec.get("paths") or [spec["path"]]
    server = spec.get("server_pid")
    # new connections per window: one idle between windows may be closed by the server
    connections = [Connection(spec["url"], spec.get("timeout_s", 300))
                   for _ in range(concurrency)]
    start = time.perf_counter()
    window: dict[str, float] = {"from": start + warmup_s, "to": float("inf")}
    done: list[tuple[float, float, object]] = []     # (start, end, status)
    stop = asyncio.Event()
    scrapes: dict[str, str] = {}
    cpu: dict[str, float] = {}

    async def worker(i: int) -> None:
        k = i
        while not stop.is_set():
            body, path = bodies[k % len(bodies)], paths[k % len(paths)]
            k += concurrency
            t0 = time.perf_counter()
            status = await connections[i].post(path, body, content_type)
            done.append((t0, time.perf_counter(), status))

    def cpu_now(when: str) -> None:
        cpu[f"client_{when}"] = time.process_time()
        if server is not None:
            cpu[f"server_{when}"] = process_cpu_s(server)

    async def referee() -> None:
        await asyncio.sleep(warmup_s)
        scrapes["before"] = (await client.get("/metrics")).text
        cpu_now("before")
        while True:
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            elapsed = now - window["from"]
            in_window = sum(1 for _, end, _ in done if end >= window["from"])
            if ((elapsed >= duration_s and in_window >= min_done) or elapsed >= max_s
                    or (spec.get("until") and Path(spec["until"]).exists())):
                window["to"] = now
                cpu_now("after")
                scrapes["after"] = (await client.get("/metrics")).text
                stop.set()
                return

    await asyncio.gather(referee(), *(worker(i) for i in range(concurrency)))
    for connection in connections:
        connection.close()
    inside = [(t0, t1, st) for t0, t1, st in done if window["from"] <= t1 <= window["to"]]
    return {"inside": [(t1 - t0, st) for t0, t1, st in inside],
            **({"trace": inside} if spec.get("trace") else {}),
            "window_s": window["to"] - window["from"],
            "errors_total": sum(1 for _, _, st in done if st != 200),
            "batches": batch_sizes(scrapes["before"], scrapes["after"]),
            "cpu_s": {who: cpu[f"{who}_after"] - cpu[f"{who}_before"]
                      for who in ("client", "server") if f"{who}_after" in cpu}}


async def run(spec: dict) -> list[dict]:
    bodies = [Path(p).read_bytes() for p in spec["bodies"]]
    levels = spec["levels"]
    windows: dict[int, list[dict]] = {c: [] for c in levels}
    # the scrapes of /metrics, seconds apart: a new connection each
    async with httpx.AsyncClient(base_url=spec["url"], timeout=spec.get("timeout_s", 300),
                                 limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for r in range(spec.get("rounds", 1)):
            for concurrency in (levels if r % 2 == 0 else levels[::-1]):
                w = await run_window(client, spec, bodies, concurrency)
                windows[concurrency].append(w)
                row = summarize(concurrency, [w])
                brief = {k: v for k, v in row.items() if k not in ("statuses", "trace")}
                print(json.dumps(brief), file=sys.stderr, flush=True)
    return [summarize(c, windows[c]) for c in levels]


def main() -> int:
    spec = json.loads(sys.stdin.read())
    json.dump(asyncio.run(run(spec)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
