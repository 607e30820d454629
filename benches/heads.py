#!/usr/bin/env python3
"""Memory under unfinished request heads: weir beside nginx, HAProxy and Envoy, on loopback.

Each proxy is started as the load harness (benches/loadtest.py) starts it, one worker. Then
--connections clients each send a request head just under that proxy's own limit and never finish
it (no blank line). The proxy's RSS (all its processes) is read before, while the heads are held,
and after the clients close, polled until it is back near the start or --return-timeout passes.
A proxy that closed a connection before the end is counted: it refused that head.

  python3 benches/heads.py                        # weir, nginx, haproxy, envoy; 300 connections
  python3 benches/heads.py --proxies weir --weir-bin /path/to/weir

The limits (bytes of head each proxy takes, the head sent is 1 KiB under it):
weir --max-request-head 64 KiB; nginx large_client_header_buffers 4 x 8 KiB (each line under 8 KiB);
Envoy max_request_headers_kb 60; HAProxy tune.bufsize 16 KiB less tune.maxrewrite 1 KiB.
"""

import argparse
import datetime
import json
import os
import resource
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadtest as lt  # noqa: E402

KIB = 1024
LIMITS = {"weir": 64 * KIB, "nginx": 32 * KIB, "envoy": 60 * KIB, "haproxy": 15 * KIB}
LINE = 7 * KIB  # under nginx's 8 KiB per line
BACK_NEAR_MIB = 2.0  # "came back": within this of the RSS before the connections


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / KIB


def head(limit: int) -> bytes:
    """A request head of limit - 1 KiB without its final blank line, in lines under 7 KiB."""
    start = b"GET /bench HTTP/1.1\r\nHost: " + lt.target_host("base").encode() + b"\r\n"
    body, size, i = [start], len(start), 0
    while size < limit - KIB:
        n = min(LINE, limit - KIB - size) - len(f"X-Pad-{i}: \r\n")
        if n <= 0:
            break
        line = f"X-Pad-{i}: ".encode() + b"a" * n + b"\r\n"
        body.append(line)
        size += len(line)
        i += 1
    return b"".join(body)


def settle(pids: list[int], timeout: float = 10.0) -> float:
    """RSS once it has stopped growing for half a second (or after timeout)."""
    last, stable_since, t0 = rss_mib(pids), time.monotonic(), time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.1)
        now = rss_mib(pids)
        if abs(now - last) > 0.1:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 0.5:
            break
    return last


def still_open(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""  # an answer (431, 400) counts as open until closed
    except BlockingIOError:
        return True
    except OSError:
        return False


def measure(name: str, ctx: dict, work: Path, connections: int, return_timeout: float) -> dict:
    r = lt.start_proxy(name, "base", work, ctx)
    try:
        pids = r.proc.pids()
        before = settle(pids)
        data = head(LIMITS[name])
        socks = []
        for _ in range(connections):
            s = socket.create_connection((lt.LOOPBACK, r.http), timeout=5)
            s.sendall(data)
            socks.append(s)
        held = settle(pids)
        refused = sum(not still_open(s) for s in socks)
        t0 = time.monotonic()
        for s in socks:
            s.close()
        after, returned_s = rss_mib(pids), None
        while time.monotonic() - t0 < return_timeout:
            after = rss_mib(pids)
            if after <= before + BACK_NEAR_MIB:
                returned_s = time.monotonic() - t0
                break
            time.sleep(0.1)
        return {
            "head_bytes": len(data), "connections": connections, "refused": refused,
            "rss_before_mib": round(before, 1), "rss_held_mib": round(held, 1), "rss_after_mib": round(after, 1),
            "growth_mib": round(held - before, 1), "bytes_per_connection": round((held - before) * KIB * KIB / connections),
            "returned_after_s": None if returned_s is None else round(returned_s, 1),
        }
    finally:
        r.proc.stop()


def render(results: dict, connections: int, return_timeout: float) -> str:
    lines = [
        f"| proxy | head held (bytes) | RSS before MiB | with {connections} heads held | growth | per connection "
        f"| after close | back within {BACK_NEAR_MIB:g} MiB | refused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | did not run: {r['error'][:200]} | | | | | | | |")
            continue
        back = f"{r['returned_after_s']:g} s" if r["returned_after_s"] is not None else f"**no** (after {return_timeout:g} s)"
        lines.append(
            f"| {name} | {r['head_bytes']:,} | {r['rss_before_mib']} | {r['rss_held_mib']} | +{r['growth_mib']} "
            f"| {r['bytes_per_connection'] / KIB:.0f} KiB | {r['rss_after_mib']} | {back} | {r['refused']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxies", default="weir,nginx,haproxy,envoy")
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--return-timeout", type=float, default=30.0, help="seconds to wait for RSS to come back")
    ap.add_argument("--weir-bin", help="measure this weir binary instead of building the checkout")
    ap.add_argument("--out", default=None, help="results folder (default benches/results/<date>/)")
    args = ap.parse_args()
    proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    for p in proxies:
        if p not in LIMITS:
            lt.die(f"unknown proxy {p!r} (known: {', '.join(LIMITS)})")
    tools = lt.ensure_tools(proxies, False)
    bins = lt.build(proxies, args.weir_bin)
    os.sched_setaffinity(0, {lt.LOAD_CPU})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = lt.ROOT / "benches" / "results" / "tmp" / f"heads-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    cert, key = lt.make_cert(work)
    ctx = {"tools": tools, "bins": bins, "cert": cert, "key": key, "saved": {}}
    results = {}
    try:
        lt.start_backend(ctx, work)
        for name in proxies:
            lt.progress(f"heads: {name}, {args.connections} connections")
            try:
                results[name] = measure(name, ctx, work, args.connections, args.return_timeout)
            except Exception as e:  # one proxy failing does not hide the others
                results[name] = {"error": str(e)}
    finally:
        lt.stop_all()
    table = render(results, args.connections, args.return_timeout)
    print(table)
    out = Path(args.out) if args.out else lt.ROOT / "benches" / "results" / datetime.date.today().isoformat()
    out.mkdir(parents=True, exist_ok=True)
    (out / "heads.json").write_text(json.dumps({"machine": lt.machine(), "results": results}, indent=2) + "\n")
    (out / "heads.md").write_text(f"# Memory under unfinished request heads\n\n{__doc__.split(chr(10) + chr(10), 1)[1]}\n{table}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
