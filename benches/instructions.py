#!/usr/bin/env python3
"""Instructions per request: weir builds compared by count, not by time.

The load harness's CPU µs/req moves by ±5% from run to run on a shared machine, more than a small
change costs. This runs each weir binary under `valgrind --tool=callgrind` (which counts the
instructions executed, the same for the same binary and inputs whatever else the machine does),
serving the load harness's keep-alive configuration (10 routes, health checks on), twice: with
--small and with --large requests from oha over 10 keep-alive connections. The difference of the
two totals divided by the difference of the request counts is the cost of one request, with start,
config load and shutdown cancelled out.

  python3 benches/instructions.py /tmp/old/weir target/release/weir

Each binary takes about a minute. Installs valgrind (Debian) if missing.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadtest as lt  # noqa: E402


def total_instructions(weir: str, ctx: dict, work: Path, requests: int) -> int:
    d = Path(tempfile.mkdtemp(dir=work))
    conf = d / "config"
    conf.mkdir()
    (conf / "bench.yaml").write_text(lt.weir_manifests("base", ctx["backend_port"], ctx["cert"], ctx["key"]))
    http, admin = lt.free_port(), lt.free_port()
    out = d / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", weir, "edge", "--threads", "1",
            "--config-dir", str(conf), "--http", f"{lt.LOOPBACK}:{http}", "--admin", f"{lt.LOOPBACK}:{admin}",
            "--drain-timeout", "1s"]
    proc = lt.Proc("weir-callgrind", argv, d, cpu=None)
    try:
        lt.wait_serving(http, lt.target_host("base"), lt.TARGET_PATH, False, proc, timeout=120)
        url = f"http://{lt.LOOPBACK}:{http}{lt.TARGET_PATH}"
        argv = [ctx["tools"]["oha"], url, "-n", str(requests), "-c", "10", "--no-tui", "--output-format", "json",
                "--worker-threads", "1", "--host", lt.target_host("base")]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
        statuses = json.loads(res.stdout).get("statusCodeDistribution", {})
        if statuses != {"200": requests}:
            lt.die(f"{weir} answered {statuses}, not {requests} times 200")
    finally:
        proc.p.send_signal(signal.SIGTERM)
        proc.p.wait(timeout=120)
        proc.stop()
    summary = re.search(r"^summary:\s+(\d+)", out.read_text(), re.M) or re.search(r"^totals:\s+(\d+)", out.read_text(), re.M)
    if not summary:
        lt.die(f"no instruction total in {out}")
    return int(summary.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weir", nargs="+", help="weir binaries to compare (the first is the baseline)")
    ap.add_argument("--small", type=int, default=2_000)
    ap.add_argument("--large", type=int, default=12_000)
    args = ap.parse_args()
    if not lt.have("valgrind"):
        lt.apt_install(["valgrind"])
    tools = lt.ensure_tools(["weir"], True)
    work = Path(tempfile.mkdtemp(prefix="weir-instructions-"))
    cert, key = lt.make_cert(work)
    ctx = {"tools": tools, "cert": cert, "key": key, "saved": {}}
    per_request = {}
    try:
        lt.start_backend(ctx, work)
        for weir in args.weir:
            small = total_instructions(weir, ctx, work, args.small)
            large = total_instructions(weir, ctx, work, args.large)
            per_request[weir] = (large - small) / (args.large - args.small)
            lt.progress(f"{weir}: {small:,} and {large:,} instructions -> {per_request[weir]:,.0f} per request")
    finally:
        lt.stop_all()
    base = per_request[args.weir[0]]
    print("| weir binary | instructions per request | vs the first |")
    print("|---|---|---|")
    for weir, n in per_request.items():
        print(f"| {weir} | {n:,.0f} | {n / base:.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
