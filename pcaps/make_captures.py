#!/usr/bin/env python3
"""Make the real captures demux is tested against, from real programs in real namespaces.

Run as root: ``python3 pcaps/make_captures.py [--only NAME] [--outdir DIR]``.

For each capture it creates two fresh network namespaces (server and client) joined by a
veth pair, starts tcpdump (or dumpcap) on the server side, runs real servers (Python
sockets, ``http.server``) in the server namespace and real clients (curl, Python) in the
client namespace, then writes three files per capture:

* ``NAME.pcap`` / ``NAME.pcapng``: what the server host saw on the wire;
* ``NAME.toml``: the server host as a demux scenario (SPEC §1), with the real pids and fds;
* ``NAME.kernel.json``: what the real kernel did, as logged by the programs themselves
  (who accepted or received each flow, and what the client saw for refused probes).

The same file also holds the programs it runs (``_role server|client``): re-executing this
script inside a namespace keeps everything in one file and the roles free of third-party
imports, so they start fast and their descriptors start at 3. Every wait has a deadline and
every namespace and process is removed in ``finally`` blocks, whatever goes wrong.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = Path(__file__).resolve()

# Only addresses inside the namespaces this script creates.
SRV4, SRV4B, CLI4 = "10.77.0.1", "10.77.0.3", "10.77.0.2"
SRV6, CLI6 = "fd77::1", "fd77::2"
SRV_MAC, CLI_MAC = "02:77:00:00:00:01", "02:77:00:00:00:02"

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)          # Linux value; absent from Python 3.11
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)


# ---------------------------------------------------------------------------------------
# Endpoints in SPEC spelling
# ---------------------------------------------------------------------------------------

def ep(addr: tuple) -> str:
    """Socket address tuple -> 'a.b.c.d:p' or '[v6]:p'; v4-mapped v6 is shown as IPv4,
    which is how the packet on the wire (and demux) spells it."""
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_ep(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# ---------------------------------------------------------------------------------------
# Roles: the programs that run inside the namespaces
# ---------------------------------------------------------------------------------------

class Log:
    """Append-only JSON-lines log; the file is opened per record so it holds no
    descriptor, and the sockets the role opens get the fds a plain program would."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()

    def __call__(self, **rec) -> None:
        rec.setdefault("ts", time.time())
        line = json.dumps(rec) + "\n"
        with self.lock, open(self.path, "a") as f:
            f.write(line)


def set_comm(name: str) -> None:
    """Name the process (what `ss -p` and /proc/PID/comm show), like a real daemon."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode()[:15], 0, 0, 0)       # PR_SET_NAME


def open_socket(spec: dict) -> socket.socket:
    """socket(), setsockopt(), bind(), connect(), listen() exactly as the spec says."""
    host, port = split_ep(spec["bind"])
    fam = family_of(host)
    tcp = spec["proto"] == "tcp"
    sk = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    if spec.get("reuseaddr"):
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if spec.get("reuseport"):
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if spec.get("rcvbuf"):
        # Before listen(): accepted sockets inherit it (the kernel doubles the value).
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, spec["rcvbuf"])
    if fam == socket.AF_INET6:
        sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if spec.get("v6only") else 0)
    if not tcp:
        # Learn each datagram's destination address (wildcard sockets do not know it).
        if fam == socket.AF_INET6:
            sk.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        if fam == socket.AF_INET or not spec.get("v6only"):
            sk.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sk.bind((host, port))
    if spec.get("connect"):
        sk.connect(split_ep(spec["connect"]))
    if tcp and not spec.get("connect"):
        sk.listen(spec.get("backlog", 128))
    return sk


def describe(sk: socket.socket, spec: dict) -> dict:
    """What the kernel says about the socket after setup (read back, not assumed)."""
    d = {"fd": sk.fileno(), "proto": spec["proto"], "bind": spec["bind"],
         "local": ep(sk.getsockname()),
         "reuseaddr": bool(sk.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)),
         "reuseport": bool(sk.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)),
         "mode": spec.get("mode", "echo")}
    if sk.family == socket.AF_INET6:
        d["v6only"] = bool(sk.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    if spec.get("connect"):
        d["connect"] = spec["connect"]
        d["remote"] = ep(sk.getpeername())
    if spec.get("rcvbuf"):
        d["rcvbuf"] = sk.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if spec["proto"] == "tcp" and not spec.get("connect"):
        d["listen"] = True
        d["backlog"] = spec.get("backlog", 128)
        d["accept"] = spec.get("mode") != "noaccept"
    return d


def dns_answer(query: bytes) -> bytes:
    """A minimal DNS response: same id and question, one A record in 192.0.2.0/24."""
    if len(query) < 12:
        return b"short query"
    qid = query[:2]
    i = 12
    while i < len(query) and query[i]:
        i += query[i] + 1
    question = query[12:i + 5]
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, len(question) % 250 + 1])
    return qid + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0) + question + rr


def dns_query(qid: int, name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)


def pktinfo_dst(ancdata, port: int) -> str | None:
    for level, typ, data in ancdata:
        if level == socket.IPPROTO_IP and typ == IP_PKTINFO and len(data) >= 12:
            return ep((socket.inet_ntop(socket.AF_INET, data[8:12]), port))
        if level == socket.IPPROTO_IPV6 and typ == IPV6_PKTINFO and len(data) >= 16:
            return ep((socket.inet_ntop(socket.AF_INET6, data[:16]), port))
    return None


def serve_udp(sk: socket.socket, spec: dict, log: Log, name: str) -> None:
    port = sk.getsockname()[1]
    fd = sk.fileno()
    while True:
        data, anc, _flags, peer = sk.recvmsg(65535, 256)
        local = pktinfo_dst(anc, port) or ep(sk.getsockname())
        log(event="datagram", proto="udp", client=ep(peer), local=local, process=name,
            pid=os.getpid(), fd=fd, bytes=len(data))
        reply = dns_answer(data) if spec.get("mode") == "dns" else \
            f"{name} pid={os.getpid()} fd={fd}: ".encode() + data
        if spec.get("connect"):
            sk.send(reply)
        else:
            sk.sendto(reply, peer)


def serve_tcp_echo(sk: socket.socket, log: Log, name: str) -> None:
    def talk(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                while data := conn.recv(4096):
                    conn.sendall(f"{name} pid={os.getpid()} fd={conn.fileno()}: ".encode() + data)
            except OSError:
                pass

    while True:
        conn, peer = sk.accept()
        log(event="accept", proto="tcp", client=ep(peer), local=ep(conn.getsockname()),
            process=name, pid=os.getpid(), fd=sk.fileno(), accepted_fd=conn.fileno())
        threading.Thread(target=talk, args=(conn,), daemon=True).start()


def serve_tcp_slow(sk: socket.socket, spec: dict, log: Log, name: str) -> None:
    """A slow consumer: leaves what arrives unread for ``pause`` seconds (the receive
    window closes), then reads it in ``bite``-byte reads ``bite_pause`` seconds apart, and
    logs how many bytes it read."""
    def drain(conn: socket.socket, peer) -> None:
        total = 0
        with conn:
            conn.settimeout(10)
            time.sleep(spec.get("pause", 1.0))
            try:
                while data := conn.recv(spec.get("bite", 2048)):
                    total += len(data)
                    time.sleep(spec.get("bite_pause", 0.02))
            except OSError:
                pass
        log(event="read", proto="tcp", client=ep(peer), bytes=total, pid=os.getpid())

    while True:
        conn, peer = sk.accept()
        log(event="accept", proto="tcp", client=ep(peer), local=ep(conn.getsockname()),
            process=name, pid=os.getpid(), fd=sk.fileno(), accepted_fd=conn.fileno())
        threading.Thread(target=drain, args=(conn, peer), daemon=True).start()


def serve_http(sk: socket.socket, spec: dict, log: Log, name: str) -> None:
    """http.server's threading server and handler, on a socket this role made itself."""
    import http.server
    import socketserver

    pages = {"/": b"<h1>demux test page</h1>\n", "/a": b"page a\n" * 20,
             "/b": b"page b\n" * 200, "/c": b"page c\n"}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if spec.get("mode") == "http" else "HTTP/1.0"
        server_version = "demux-httpd/1"

        def do_GET(self):
            body = pages.get(self.path)
            status = 200 if body is not None else 404
            body = body if body is not None else b"not found\n"
            log(event="request", client=ep(self.client_address), path=self.path, status=status,
                accepted_fd=self.connection.fileno(), pid=os.getpid())
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

        def __init__(self):
            socketserver.BaseServer.__init__(self, sk.getsockname()[:2], Handler)
            self.socket = sk

        def get_request(self):
            conn, peer = self.socket.accept()
            log(event="accept", proto="tcp", client=ep(peer), local=ep(conn.getsockname()),
                process=name, pid=os.getpid(), fd=sk.fileno(), accepted_fd=conn.fileno())
            return conn, peer

    Server().serve_forever(poll_interval=0.2)


def role_server(cfg: dict) -> None:
    """A daemon with the given sockets; logs 'ready' (with each socket read back from the
    kernel) and then every accepted connection and received datagram."""
    log = Log(cfg["log"])
    name = cfg["name"]
    set_comm(name)
    if cfg.get("uid"):
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])       # before socket(): the socket's uid is what reuseport checks
    socks = []
    for spec in cfg["sockets"]:
        socks.append((open_socket(spec), spec))
    log(event="ready", process=name, pid=os.getpid(), uid=os.getuid(),
        sockets=[describe(sk, spec) for sk, spec in socks])
    # Block the stop signals before the threads start, so that sigwait() below gets them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    for sk, spec in socks:
        mode = spec.get("mode", "echo")
        if mode == "noaccept":
            continue                # never accept(): the accept queue fills up to the backlog
        if spec["proto"] == "udp":
            target, args = serve_udp, (sk, spec, log, name)
        elif mode in ("http", "http10"):
            target, args = serve_http, (sk, spec, log, name)
        elif mode == "slowread":
            target, args = serve_tcp_slow, (sk, spec, log, name)
        else:
            target, args = serve_tcp_echo, (sk, log, name)
        threading.Thread(target=target, args=args, daemon=True).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    os._exit(0)


def client_tcp(op: dict, log: Log, held: list) -> None:
    host, port = split_ep(op["dst"])
    sk = socket.socket(family_of(host), socket.SOCK_STREAM)
    if op.get("reuseaddr"):
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if op.get("src"):
        sk.bind(split_ep(op["src"]))
    sk.settimeout(op.get("timeout", 2.0))
    rec = {"op": "tcp", "proto": "tcp", "server": op["dst"], "fd": sk.fileno(), "t0": time.time()}
    try:
        sk.connect((host, port))
        rec["result"] = "connected"
        if op.get("send"):
            sk.sendall(op["send"].encode())
            if op.get("read", True):
                chunks = []
                while True:
                    data = sk.recv(65536)
                    chunks.append(data)
                    if not data or not op.get("until_eof"):
                        break
                rec["reply"] = b"".join(chunks).decode(errors="replace")[:200]
    except ConnectionRefusedError:
        rec["result"] = "ECONNREFUSED"
    except TimeoutError:
        rec["result"] = "timeout"
    except OSError as e:
        rec["result"] = e.__class__.__name__ + ": " + str(e)
    rec["client"] = ep(sk.getsockname())
    if op.get("hold") and rec["result"] == "connected":
        held.append(sk)
    else:
        sk.close()
    rec["t1"] = time.time()
    log(event="client", **rec)


def client_udp(op: dict, log: Log) -> None:
    """A connected UDP socket, so an ICMP port unreachable shows up as ECONNREFUSED."""
    host, port = split_ep(op["dst"])
    sk = socket.socket(family_of(host), socket.SOCK_DGRAM)
    if op.get("src"):
        sk.bind(split_ep(op["src"]))
    sk.connect((host, port))
    sk.settimeout(op.get("timeout", 1.0))
    rec = {"op": "udp", "proto": "udp", "server": op["dst"], "client": ep(sk.getsockname()),
           "fd": sk.fileno(), "t0": time.time()}
    payload = op.get("payload", "hello")
    data = dns_query(op.get("qid", 4242), payload[4:]) if payload.startswith("dns:") else payload.encode()
    try:
        sk.send(data)
        reply = sk.recv(65535)
        rec["result"] = "answer"
        rec["reply_bytes"] = len(reply)
    except ConnectionRefusedError:
        rec["result"] = "ECONNREFUSED"
    except TimeoutError:
        rec["result"] = "timeout"
    sk.close()
    rec["t1"] = time.time()
    log(event="client", **rec)


def client_udp_sweep(op: dict, log: Log) -> None:
    """Probe many closed UDP ports at once, then look at which got an ICMP error back."""
    socks = []
    for port in op["ports"]:
        sk = socket.socket(family_of(op["host"]), socket.SOCK_DGRAM)
        sk.connect((op["host"], port))
        sk.send(b"probe")
        socks.append((port, sk))
    t0 = time.time()
    time.sleep(op.get("wait", 0.5))
    for port, sk in socks:
        rec = {"op": "udp", "proto": "udp", "server": ep((op["host"], port)),
               "client": ep(sk.getsockname()), "fd": sk.fileno(), "t0": t0}
        err = sk.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            sk.setblocking(False)
            try:
                sk.recv(65535)
                rec["result"] = "answer"
            except BlockingIOError:
                rec["result"] = "timeout"
            except ConnectionRefusedError:
                rec["result"] = "ECONNREFUSED"
        else:
            rec["result"] = "ECONNREFUSED" if err == 111 else os.strerror(err)
        sk.close()
        log(event="client", **rec)


def role_client(cfg: dict) -> None:
    """Run the listed client operations in order, logging what each one saw."""
    log = Log(cfg["log"])
    set_comm(cfg["name"])
    log(event="ready", process=cfg["name"], pid=os.getpid(), uid=os.getuid(), sockets=[])
    held: list = []
    for op in cfg["ops"]:
        kind = op["op"]
        if kind == "tcp":
            client_tcp(op, log, held)
        elif kind == "udp":
            client_udp(op, log)
        elif kind == "udp_sweep":
            client_udp_sweep(op, log)
        elif kind == "sleep":
            time.sleep(op["s"])
        elif kind == "close_held":
            for sk in held:
                sk.close()
            held.clear()
    for sk in held:
        sk.close()


# ---------------------------------------------------------------------------------------
# The lab: namespaces, processes, capture
# ---------------------------------------------------------------------------------------

def sh(*argv: str, timeout: float = 10, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def wait_for(pred, timeout: float, what: str, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def proc_counters(ns: str) -> dict:
    """The namespace's SNMP counters (/proc/net/{snmp,netstat,snmp6} are per netns)."""
    out = sh("ip", "netns", "exec", ns, "cat", "/proc/net/snmp", "/proc/net/netstat",
             "/proc/net/snmp6").stdout.splitlines()
    counters = {}
    i = 0
    while i < len(out):
        parts = out[i].split()
        if parts and parts[0].endswith(":") and i + 1 < len(out):
            vals = out[i + 1].split()
            if vals and vals[0] == parts[0]:
                for k, v in zip(parts[1:], vals[1:]):
                    if v.lstrip("-").isdigit():
                        counters[parts[0][:-1] + k] = int(v)
                i += 2
                continue
        if len(parts) == 2 and parts[1].isdigit():          # snmp6: "Name value"
            counters[parts[0]] = int(parts[1])
        i += 1
    return counters


class Lab:
    """Two namespaces joined by a veth pair, and every process started in them."""

    def __init__(self, work: Path):
        tag = f"{os.getpid() % 100000}"
        self.srv, self.cli = f"dmx-srv-{tag}", f"dmx-cli-{tag}"
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.roles: dict[str, Path] = {}
        self.seq = 0

    def __enter__(self) -> "Lab":
        try:
            self._setup()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _setup(self) -> None:
        sh("ip", "netns", "add", self.srv)
        sh("ip", "netns", "add", self.cli)
        tag = self.srv.rsplit("-", 1)[1]
        # Created straight inside the namespaces: nothing ever touches the root namespace.
        sh("ip", "link", "add", f"dxs{tag}", "netns", self.srv, "type", "veth",
           "peer", "name", f"dxc{tag}", "netns", self.cli)
        for ns, dev, mac, v4, v6 in ((self.srv, f"dxs{tag}", SRV_MAC, SRV4, SRV6),
                                     (self.cli, f"dxc{tag}", CLI_MAC, CLI4, CLI6)):
            sh("ip", "-n", ns, "link", "set", dev, "name", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
            # No link-local address: no DAD, no router solicitations, less noise.
            sh("ip", "-n", ns, "link", "set", "eth0", "addrgenmode", "none")
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.srv, "addr", "add", f"{SRV4B}/24", "dev", "eth0")

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    pass
        for ns in (self.srv, self.cli):
            sh("ip", "netns", "del", ns, check=False)

    def popen(self, ns: str, argv: list[str], tag: str) -> subprocess.Popen:
        out = open(self.work / f"{tag}.out", "w")
        err = open(self.work / f"{tag}.err", "w")
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        err.close()
        self.procs.append(p)
        return p

    def role(self, ns: str, kind: str, cfg: dict) -> tuple[subprocess.Popen, Path]:
        self.seq += 1
        log = self.work / f"{self.seq:02d}-{cfg['name']}.jsonl"
        log.touch()
        log.chmod(0o666)            # roles may drop to another uid before logging
        cfg = dict(cfg, log=str(log))
        p = self.popen(ns, [sys.executable, str(SCRIPT), "_role", kind, json.dumps(cfg)],
                       f"{self.seq:02d}-{cfg['name']}")
        self.roles[f"{self.seq:02d}-{cfg['name']}"] = log
        return p, log

    def server(self, name: str, sockets: list[dict], uid: int = 0, ns: str | None = None) -> dict:
        """Start a server role and wait until its sockets are set up; returns its 'ready'."""
        p, log = self.role(ns or self.srv, "server", {"name": name, "sockets": sockets, "uid": uid})

        def ready():
            if p.poll() is not None:
                raise RuntimeError(f"server {name} exited: "
                                   + (self.work / f"{self.seq:02d}-{name}.err").read_text())
            return next((r for r in read_log(log) if r["event"] == "ready"), None)
        return wait_for(ready, 10, f"server {name}")

    def client(self, name: str, ops: list[dict], timeout: float = 30, ns: str | None = None,
               wait: bool = True) -> tuple[subprocess.Popen, Path]:
        p, log = self.role(ns or self.cli, "client", {"name": name, "ops": ops})
        if wait:
            self.wait(p, timeout, name)
        return p, log

    def wait(self, p: subprocess.Popen, timeout: float, what: str) -> None:
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise TimeoutError(f"{what} did not finish within {timeout}s")
        if rc != 0:
            errs = sorted(self.work.glob("*.err"))
            raise RuntimeError(f"{what} failed with status {rc}: "
                               + " | ".join(e.read_text()[-500:] for e in errs if e.read_text()))

    def run(self, ns: str, argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *argv, timeout=timeout)

    def logs(self) -> list[dict]:
        recs = []
        for log in self.roles.values():
            recs.extend(read_log(log))
        return recs


class CaptureDropped(RuntimeError):
    """The capture tool reported packets it did not record."""


class Capture:
    """tcpdump (or dumpcap) in the server namespace, started and stopped with deadlines."""

    def __init__(self, lab: Lab, path: Path, iface: str = "eth0", tool: str = "tcpdump",
                 linktype: str | None = None, extra_ifaces: tuple = ()):
        self.lab, self.path, self.tool = lab, path, tool
        if tool == "tcpdump":
            # --immediate-mode: without it a TPACKET_V3 block is handed over only when full or
            # after a second, and packets still in the ring when tcpdump is stopped are lost.
            # -B: in immediate mode each ring frame holds a whole snaplen (256 KiB with -s 0);
            # the default 2 MiB ring then has 8 frames and drops packets in a burst.
            argv = ["tcpdump", "-i", iface, "-s", "0", "-U", "--immediate-mode", "-B", "65536",
                    "-n", "-Z", "root", "-w", str(path)]
            if linktype:
                argv += ["-y", linktype]
            self.ready_text = "listening on"
        else:
            argv = ["dumpcap", "-i", iface, *sum((["-i", i] for i in extra_ifaces), []),
                    "-B", "64", "-n", "-w", str(path)]
            self.ready_text = "Capturing on"
        self.command = " ".join(["ip netns exec <server-ns>", *argv]).replace(str(path), path.name)
        self.proc = lab.popen(lab.srv, argv, f"capture-{path.stem}")
        self.err = lab.work / f"capture-{path.stem}.err"
        wait_for(lambda: self.ready_text in self.err.read_text() or self.proc.poll() is not None,
                 15, f"{tool} to start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{tool} failed: {self.err.read_text()}")
        time.sleep(0.3)             # the socket is open before the message; let it settle

    def stop(self) -> str:
        # The last ACKs and FINs are still on their way: stop once the file has stopped
        # growing for a while (bounded).
        deadline = time.monotonic() + 5
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.path.stat().st_size if self.path.exists() else 0
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since > 0.6:
                break
            time.sleep(0.05)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=3)
        self.path.chmod(0o644)      # dumpcap creates it 0600
        said = [l for l in self.err.read_text().splitlines()
                if l.strip() and not l.startswith("Packets: ")]   # dumpcap's running count
        # A capture with holes would teach the emulator wrong facts: refuse it (make() retries).
        for line in said:
            if line.endswith("packets dropped by kernel") and not line.startswith("0 "):
                raise CaptureDropped(line)
            counts = re.search(r"': \d+/(\d+) ", line)        # dumpcap: received/dropped
            if line.startswith("Packets received/dropped") and counts and counts[1] != "0":
                raise CaptureDropped(line)
        return said


# ---------------------------------------------------------------------------------------
# Writing the three files
# ---------------------------------------------------------------------------------------

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def scenario_socket(d: dict) -> dict:
    """A socket read back from the kernel -> its SPEC §1 table (defaults left out)."""
    s = {"proto": d["proto"], "bind": d["bind"]}
    if d.get("connect"):
        s["connect"] = d["connect"]
    for key in ("reuseaddr", "reuseport"):
        if d.get(key):
            s[key] = True
    if "v6only" in d:
        s["v6only"] = d["v6only"]
    if d.get("listen"):
        s["backlog"] = d["backlog"]
        if not d["accept"]:
            s["accept"] = False
    s["fd"] = d["fd"]
    return s


def write_toml(path: Path, title: str, host: dict, sysctl: dict, processes: list[dict]) -> None:
    lines = [f"# {title}", "# Made by pcaps/make_captures.py: the capturing (server) host, "
             "with the real pids and fds of the run.", "", "[host]"]
    for k, v in host.items():
        lines.append(f"{k} = {toml_value(v)}")
    lines += ["", "[sysctl]"]
    lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in sysctl.items()]
    for p in processes:
        lines += ["", "[[process]]", f"name = {toml_value(p['name'])}", f"pid = {p['pid']}",
                  f"uid = {p['uid']}", "sockets = ["]
        lines += [f"  {toml_value(s)}," for s in p["sockets"]]
        lines.append("]")
    path.write_text("\n".join(lines) + "\n")


def host_sysctl(lab: Lab) -> dict:
    vals = lab.run(lab.srv, ["cat", "/proc/sys/net/ipv4/ip_local_port_range",
                             "/proc/sys/net/ipv4/ip_local_reserved_ports",
                             "/proc/sys/net/ipv4/ip_unprivileged_port_start",
                             "/proc/sys/net/ipv6/bindv6only"]).stdout.split("\n")
    return {"net.ipv4.ip_local_port_range": " ".join(vals[0].split()),
            "net.ipv4.ip_local_reserved_ports": vals[1].strip(),
            "net.ipv4.ip_unprivileged_port_start": int(vals[2]),
            "net.ipv6.bindv6only": int(vals[3])}


def analyse(path: Path) -> dict:
    """Packet facts from the capture itself (scapy): counts the kernel.json refers to."""
    from scapy.all import ICMP, IP, TCP, UDP, IPv6, PcapNgReader, PcapReader  # noqa: slow import
    from scapy.layers.inet6 import ICMPv6DestUnreach

    reader = PcapNgReader if path.suffix == ".pcapng" else PcapReader
    facts = {"packets": 0, "tcp": 0, "udp": 0, "syn": 0, "synack": 0, "rst": 0,
             "icmp_port_unreachable": 0, "icmp6_port_unreachable": 0, "other": 0,
             "syns_by_flow": {}, "first_fin": {}, "rst_from": {}}
    with reader(str(path)) as r:
        for pkt in r:
            facts["packets"] += 1
            if TCP in pkt:
                facts["tcp"] += 1
                t = pkt[TCP]
                flags = int(t.flags)
                net = pkt[IP] if IP in pkt else pkt[IPv6]
                if flags & 0x02 and not flags & 0x10:
                    facts["syn"] += 1
                    key = f"{ep((net.src, t.sport))}>{ep((net.dst, t.dport))}"
                    facts["syns_by_flow"][key] = facts["syns_by_flow"].get(key, 0) + 1
                elif flags & 0x12 == 0x12:
                    facts["synack"] += 1
                if flags & 0x04:
                    facts["rst"] += 1
                    facts["rst_from"].setdefault(
                        frozenset((ep((net.src, t.sport)), ep((net.dst, t.dport)))), ep((net.src, t.sport)))
                if flags & 0x01:
                    facts["first_fin"].setdefault(
                        frozenset((ep((net.src, t.sport)), ep((net.dst, t.dport)))), ep((net.src, t.sport)))
            elif ICMP in pkt and pkt[ICMP].type == 3 and pkt[ICMP].code == 3:
                facts["icmp_port_unreachable"] += 1
            elif ICMPv6DestUnreach in pkt and pkt[ICMPv6DestUnreach].code == 4:
                facts["icmp6_port_unreachable"] += 1
            elif UDP in pkt:
                facts["udp"] += 1
            else:
                facts["other"] += 1
    return facts


def finish(name: str, outdir: Path, lab: Lab, cap: Capture, title: str, servers: list[dict],
           extra_host: list[str] = (), local_clients=None,
           notes: list[str] = (), extra: dict | None = None,
           counters_before: dict | None = None) -> dict:
    """Stop the capture and write NAME.toml and NAME.kernel.json from the roles' logs."""
    ss = lab.run(lab.srv, ["ss", "-tuanpe"]).stdout
    counters_after = proc_counters(lab.srv)
    tcpdump_said = cap.stop()
    facts = analyse(cap.path)
    first_ts = first_packet_ts(cap.path)
    recs = lab.logs()

    processes = []
    for r in servers:
        processes.append({"name": r["process"], "pid": r["pid"], "uid": r["uid"],
                          "sockets": [scenario_socket(s) for s in r["sockets"]]})
    if local_clients:                # client sockets on the capturing host itself
        processes.extend(local_clients(first_ts))
    addrs = [SRV4, *extra_host, SRV6]
    write_toml(outdir / f"{name}.toml", title,
               {"name": "dmx-srv", "addresses": addrs, "interfaces": {"eth0": addrs}},
               host_sysctl(lab), processes)

    flows = []
    for r in sorted(recs, key=lambda r: r["ts"]):
        if r["event"] == "accept":
            flows.append({k: r[k] for k in ("proto", "client", "local", "process", "pid", "fd",
                                             "accepted_fd", "ts")} | {"outcome": "accepted"})
        elif r["event"] == "datagram":
            flows.append({k: r[k] for k in ("proto", "client", "local", "process", "pid", "fd",
                                             "bytes", "ts")} | {"outcome": "received"})
        elif r["event"] == "request":
            for f in reversed(flows):
                if f.get("client") == r["client"] and f["proto"] == "tcp":
                    f.setdefault("requests", []).append(f"GET {r['path']} {r['status']}")
                    break
    client_seen = [r for r in recs if r["event"] == "client"]
    accepted = {(f["client"], f["local"]) for f in flows if f["proto"] == "tcp"}
    for c in client_seen:
        if c["result"] == "connected" and (c["client"], c["server"]) not in accepted:
            # Handshake done by the kernel but never accept()ed: it sits in the accept queue
            # of the listener that would have been chosen (here: the only one on that port).
            port = split_ep(c["server"])[1]
            owner = next(((r, s) for r in servers for s in r["sockets"]
                          if s["proto"] == "tcp" and s.get("listen")
                          and split_ep(s["local"])[1] == port), None)
            flow = {"proto": "tcp", "client": c["client"], "local": c["server"],
                    "outcome": "queued-not-accepted", "client_saw": "connected", "ts": c["t0"]}
            if owner:
                flow |= {"process": owner[0]["process"], "pid": owner[0]["pid"],
                         "fd": owner[1]["fd"], "accepted_fd": None}
            flows.append(flow)
            continue
        if c["result"] in ("answer", "connected"):
            continue
        outcome = {"ECONNREFUSED": "refused" if c["proto"] == "tcp" else "unreachable",
                   "timeout": "no-answer"}.get(c["result"], "error")
        flows.append({"proto": c["proto"], "client": c["client"], "local": c["server"],
                      "outcome": outcome, "client_saw": c["result"], "ts": c.get("t0")})
    # What each client saw, attached to the flow the server logged (same 4-tuple).
    for f in flows:
        for c in client_seen:
            if c["client"] == f["client"] and c["server"] == f["local"] and "client_saw" not in f:
                f["client_saw"] = c["result"]
    flows.sort(key=lambda f: f.get("ts") or 0)
    for f in flows:                   # how each TCP flow ended, as seen on the wire
        if f["proto"] != "tcp":
            continue
        pair = frozenset((f["client"], f["local"]))
        if pair in facts["first_fin"]:
            f["first_fin_from"] = "client" if facts["first_fin"][pair] == f["client"] else "server"
        if pair in facts["rst_from"]:
            f["rst_from"] = "client" if facts["rst_from"][pair] == f["client"] else "server"

    delta = {k: v - (counters_before or {}).get(k, 0) for k, v in counters_after.items()}
    keep = ("TcpExtListenOverflows", "TcpExtListenDrops", "TcpOutRsts", "TcpPassiveOpens",
            "TcpActiveOpens", "TcpAttemptFails", "UdpNoPorts", "UdpInDatagrams", "Udp6NoPorts",
            "Udp6InDatagrams", "IcmpOutDestUnreachs", "Icmp6OutDestUnreachs",
            "TcpExtTW", "TcpExtTWRecycled", "TcpExtTCPTimeWaitOverflow", "TcpExtSyncookiesSent",
            "TcpExtTCPReqQFullDrop", "TcpExtTCPReqQFullDoCookies", "IcmpOutRateLimitHost",
            "IcmpOutRateLimitGlobal", "Icmp6OutRateLimitHost")
    kernel = {
        "capture": cap.path.name,
        "title": title,
        "format": "pcapng" if cap.path.suffix == ".pcapng" else "pcap",
        "linktype": link_layers(cap.path),
        "made_with": cap.command,
        "kernel": os.uname().release,
        "first_packet_ts": first_ts,
        "host": {"addresses": addrs, "interface": "eth0", "mac": SRV_MAC,
                 "client": {"addresses": [CLI4, CLI6], "mac": CLI_MAC}},
        "processes": [{"process": r["process"], "pid": r["pid"], "uid": r["uid"],
                       "sockets": r["sockets"]} for r in servers],
        "flows": flows,
        "client_log": [{k: c.get(k) for k in ("proto", "client", "server", "result", "reply",
                                               "reply_bytes")} for c in client_seen],
        "packet_counts": {k: v for k, v in facts.items() if k not in ("syns_by_flow", "first_fin", "rst_from")},
        "counters": {k: delta.get(k, 0) for k in keep if k in delta},
        "ss_after_traffic": ss,
        "capture_tool_said": tcpdump_said,
        "notes": list(notes),
    }
    if extra:
        kernel.update(extra(facts) if callable(extra) else extra)
    (outdir / f"{name}.kernel.json").write_text(json.dumps(kernel, indent=1) + "\n")
    return facts


LINKTYPES = {1: "EN10MB", 113: "LINUX_SLL", 276: "LINUX_SLL2"}


def link_layers(path: Path) -> list[dict]:
    """Link type of each interface: one for pcap, one per Interface Description Block for
    pcapng (read from the blocks directly; scapy does not expose them)."""
    data = path.read_bytes()
    if path.suffix != ".pcapng":
        lt = struct.unpack("<I" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">I", data[20:24])[0]
        return [{"interface": 0, "linktype": lt, "name": LINKTYPES.get(lt, str(lt))}]
    order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    found, off = [], 0
    while off + 12 <= len(data):
        btype, blen = struct.unpack(order + "II", data[off:off + 8])
        if btype == 1:                  # Interface Description Block
            lt = struct.unpack(order + "H", data[off + 8:off + 10])[0]
            ifname, opt = None, off + 16
            while opt + 4 <= off + blen - 4:
                code, olen = struct.unpack(order + "HH", data[opt:opt + 4])
                if code == 0:
                    break
                if code == 2:           # if_name
                    ifname = data[opt + 4:opt + 4 + olen].decode(errors="replace")
                opt += 4 + (olen + 3) // 4 * 4
            found.append({"interface": len(found), "linktype": lt,
                          "name": LINKTYPES.get(lt, str(lt)), "if_name": ifname})
        off += max(blen, 12)
    return found


def first_packet_ts(path: Path) -> float | None:
    from scapy.all import PcapNgReader, PcapReader
    reader = PcapNgReader if path.suffix == ".pcapng" else PcapReader
    with reader(str(path)) as r:
        for pkt in r:
            return float(pkt.time)
    return None


# ---------------------------------------------------------------------------------------
# The captures
# ---------------------------------------------------------------------------------------

def cap_http(lab: Lab, outdir: Path, v6: bool) -> None:
    name = "http6" if v6 else "http4"
    cap = Capture(lab, outdir / f"{name}.pcap")
    before = proc_counters(lab.srv)
    bind = "[::]:8080" if v6 else "0.0.0.0:8080"
    # reuseaddr and backlog 5 are what http.server's HTTPServer itself uses.
    srv = lab.server("httpd", [{"proto": "tcp", "bind": bind, "reuseaddr": True, "backlog": 5,
                                "mode": "http", "v6only": False}])
    host = f"[{SRV6}]" if v6 else SRV4
    base = f"http://{host}:8080"
    curl = ["curl", "-sS", "-g", "--max-time", "5", "-w", "%{http_code} %{local_port}\\n"]

    def urls(*paths, base=base):
        return [a for p in paths for a in ("-o", "/dev/null", f"{base}{p}")]
    runs = [
        [*curl, *urls("/", "/a", "/b")],                                # one keepalive connection
        [*curl, "-H", "Connection: close", *urls("/a", "/c")],          # two connections
        [*curl, "--http1.0", *urls("/b")],                              # HTTP/1.0
        [*curl, *urls("/missing")],                                     # a 404
    ]
    if v6:
        runs.append([*curl, *urls("/c", base=f"http://{SRV4}:8080")])  # IPv4 into the [::] socket
    said = []
    for argv in runs:
        said.append({"argv": " ".join(argv), "output": lab.run(lab.cli, argv, timeout=10).stdout})
    title = ("curl over IPv6 (and one IPv4) to a dual-stack http.server on [::]:8080" if v6
             else "curl over IPv4 to an http.server on 0.0.0.0:8080")
    notes = ["flows[].first_fin_from says which side closed first: that side ends in TIME-WAIT."]
    if v6:
        notes.append("The IPv4 connection to the [::] v6only=false socket is accepted by that "
                     "socket; accept() reports the peer as ::ffff:10.77.0.2 (an IPv4-mapped "
                     "address); flows spell it as IPv4, as on the wire.")
    finish(name, outdir, lab, cap, title, [srv], notes=notes, counters_before=before,
           extra={"curl": said})


def cap_dns(lab: Lab, outdir: Path) -> None:
    cap = Capture(lab, outdir / "dns-udp.pcap")
    before = proc_counters(lab.srv)
    resolver = lab.server("resolver", [{"proto": "udp", "bind": "0.0.0.0:53", "reuseaddr": True,
                                        "mode": "dns"}])
    # A second process, newer (head of the chain), on the same port, connect()ed to one
    # client endpoint: it must win for that peer only.
    pinned = lab.server("pinned", [{"proto": "udp", "bind": "0.0.0.0:53", "reuseaddr": True,
                                    "connect": f"{CLI4}:5300", "mode": "dns"}])
    ops = []
    for i, src in enumerate([f"{CLI4}:5300", f"{CLI4}:5301", None, f"{CLI4}:5300", None,
                             f"{CLI4}:5302", f"{CLI4}:5300", None]):
        op = {"op": "udp", "dst": f"{SRV4}:53", "payload": f"dns:host{i}.example.test",
              "qid": 0x1000 + i, "timeout": 1.0}
        if src:
            op["src"] = src
        ops.append(op)
    ops.append({"op": "udp", "dst": f"[{SRV6}]:53", "payload": "dns:v6.example.test",
                "qid": 0x2000, "timeout": 0.6})           # IPv4-only resolver: ICMPv6 unreachable
    ops.append({"op": "udp", "dst": f"{SRV4}:54", "payload": "dns:closed.example.test",
                "qid": 0x2001, "timeout": 0.6})           # nobody on 54: ICMP port unreachable
    lab.client("dig", ops)
    finish("dns-udp", outdir, lab, cap,
           "UDP resolver on 0.0.0.0:53 and a connected UDP socket on the same port", [resolver, pinned],
           notes=["'pinned' binds 0.0.0.0:53 (SO_REUSEADDR) after 'resolver' and then connect()s "
                  "to 10.77.0.2:5300: the kernel fills in its local address at connect(), so "
                  "getsockname() reads 10.77.0.1:53 afterwards (see processes[].sockets[].local). "
                  "Datagrams from 10.77.0.2:5300 reach 'pinned'; from any other port, 'resolver'.",
                  "Replies from 'pinned' and 'resolver' both leave from 10.77.0.1:53."],
           counters_before=before)


def cap_scan(lab: Lab, outdir: Path) -> None:
    cap = Capture(lab, outdir / "scan.pcap")
    before = proc_counters(lab.srv)
    # The specific listener is bound FIRST (older): it must still win over the newer wildcard.
    spec = lab.server("spec9000", [{"proto": "tcp", "bind": f"{SRV4}:9000", "reuseport": True,
                                    "backlog": 16}])
    anyl = lab.server("any9000", [{"proto": "tcp", "bind": "0.0.0.0:9000", "reuseport": True,
                                   "backlog": 16}])
    web = lab.server("web", [{"proto": "tcp", "bind": "0.0.0.0:8081", "backlog": 16},
                             {"proto": "tcp", "bind": "[::]:8443", "v6only": True, "backlog": 16},
                             {"proto": "udp", "bind": "0.0.0.0:5353"}])
    dnsd = lab.server("dnsd", [{"proto": "udp", "bind": "0.0.0.0:53", "mode": "dns"}])
    ops = [{"op": "tcp", "dst": f"{SRV4}:{p}", "send": "probe\n", "timeout": 1.0}
           for p in (22, 53, 80, 443, 8080, 8081, 8443, 9000, 9001)]
    ops += [{"op": "tcp", "dst": f"{SRV4B}:9000", "send": "probe\n", "timeout": 1.0}]
    ops += [{"op": "tcp", "dst": f"[{SRV6}]:{p}", "send": "probe\n", "timeout": 1.0}
            for p in (8081, 8443, 9000)]
    ops += [{"op": "udp", "dst": f"{SRV4}:{p}", "payload": "dns:scan.example.test" if p == 53 else "probe",
             "timeout": 0.5} for p in (53, 123, 161, 5353, 9000)]
    ops += [{"op": "udp", "dst": f"[{SRV6}]:53", "payload": "probe", "timeout": 0.5}]
    # Twelve closed UDP ports at once: ICMP errors are rate limited per destination.
    ops += [{"op": "udp_sweep", "host": SRV4, "ports": list(range(33434, 33446)), "wait": 0.6}]
    lab.client("scanner", ops, timeout=40)
    finish("scan", outdir, lab, cap,
           "connect()/UDP scan of open and closed ports; 10.77.0.1:9000 vs 0.0.0.0:9000",
           [spec, anyl, web, dnsd], extra_host=[SRV4B],
           notes=["spec9000 (10.77.0.1:9000) and any9000 (0.0.0.0:9000) coexist only because "
                  "both set SO_REUSEPORT with the same uid; they are different reuseport groups "
                  "(different bound address). The SYN to 10.77.0.1:9000 goes to spec9000 although "
                  "any9000 was bound later; the SYN to 10.77.0.3:9000 goes to any9000.",
                  "TCP to [fd77::1]:8081 and [fd77::1]:9000 gets RST: those are AF_INET sockets.",
                  "The UDP sweep sends 12 datagrams to closed ports within a millisecond; the "
                  "kernel's ICMP rate limit (icmp_ratelimit/icmp_msgs_burst) answers only some "
                  "of them: see flows with client_saw 'timeout' and packet_counts."],
           counters_before=before)


def cap_reuseport(lab: Lab, outdir: Path) -> None:
    cap = Capture(lab, outdir / "reuseport.pcap")
    before = proc_counters(lab.srv)
    workers = [lab.server(f"worker-{i}", [{"proto": "tcp", "bind": "0.0.0.0:8000", "reuseport": True,
                                           "backlog": 128}], uid=1000) for i in range(1, 5)]
    ops = [{"op": "tcp", "dst": f"{SRV4}:8000", "send": f"hello {i}\n", "timeout": 2.0}
           for i in range(40)]
    lab.client("loadgen", ops, timeout=40)

    def spread(_facts):
        counts = {}
        for r in lab.logs():
            if r["event"] == "accept":
                counts[r["process"]] = counts.get(r["process"], 0) + 1
        return {"accepted_per_worker": counts}
    finish("reuseport", outdir, lab, cap,
           "four SO_REUSEPORT worker processes (uid 1000) on 0.0.0.0:8000, 40 connections",
           workers, notes=["Workers were started (and bound) in the order worker-1..4; each is a "
                           "separate process with its own listening socket on fd 3. The member "
                           "a flow lands on depends on a boot-time hash secret: the split is "
                           "real but not reproducible across boots."],
           counters_before=before, extra=spread)


def cap_any(lab: Lab, outdir: Path, name: str, linktype: str) -> None:
    cap = Capture(lab, outdir / f"{name}.pcap", iface="any", linktype=linktype)
    before = proc_counters(lab.srv)
    echo = lab.server("echod", [{"proto": "tcp", "bind": "0.0.0.0:7000", "backlog": 16},
                                {"proto": "udp", "bind": "0.0.0.0:7001"}])
    lab.client("remote", [
        {"op": "tcp", "dst": f"{SRV4}:7000", "send": "remote tcp\n", "timeout": 2.0},
        {"op": "udp", "dst": f"{SRV4}:7001", "payload": "remote udp", "timeout": 1.0},
        {"op": "udp", "dst": f"{SRV4}:7002", "payload": "closed", "timeout": 0.5},
        {"op": "tcp", "dst": f"[{SRV6}]:7000", "send": "v6 tcp\n", "timeout": 1.0},
    ])
    # A client on the capturing host itself, over loopback, with fixed source ports.
    _p, llog = lab.client("localcli", [
        {"op": "tcp", "dst": "127.0.0.1:7000", "src": "127.0.0.1:40000", "send": "local tcp\n",
         "timeout": 2.0},
        {"op": "udp", "dst": "127.0.0.1:7001", "src": "127.0.0.1:40001", "payload": "local udp",
         "timeout": 1.0},
    ], ns=lab.srv)

    # The local client's `at` needs the first packet's time, known once the capture stops.
    finish(name, outdir, lab, cap, f"tcpdump -i any ({linktype}): remote and loopback TCP+UDP",
           [echo], local_clients=lambda first: [local_client_process(llog, first)],
           notes=[f"Captured with -i any: link type {linktype}. Loopback packets appear ONCE, "
                  "with packet type HOST (0, 'In') even when this host sent them: the kernel "
                  "hands the packet socket both copies and libpcap drops the outgoing one on lo "
                  "('received by filter' counts both). veth packets are 'In' or 'Out' (4).",
                  "localcli runs on the server host: its sockets carry 'at'/'close_at' (seconds "
                  "from the first packet) because they exist only during the capture."],
           counters_before=before)


def local_client_process(log: Path, first: float) -> dict:
    """A client role that ran on the capturing host, as a scenario process: its sockets
    exist only during the capture, so each gets `at`/`close_at` from the first packet."""
    recs = read_log(log)
    ready = next(r for r in recs if r["event"] == "ready")
    socks = [{"proto": r["proto"], "bind": r["client"], "connect": r["server"], "fd": r["fd"],
              "at": round(max(0.0, r["t0"] - first), 6),
              "close_at": round(r["t1"] - first + 1e-6, 6)}
             for r in recs if r["event"] == "client"]
    return {"name": ready["process"], "pid": ready["pid"], "uid": ready["uid"], "sockets": socks}


def cap_mixed(lab: Lab, outdir: Path) -> None:
    cap = Capture(lab, outdir / "mixed-pcapng.pcapng", tool="dumpcap", extra_ifaces=("lo",))
    before = proc_counters(lab.srv)
    web = lab.server("web10", [{"proto": "tcp", "bind": "0.0.0.0:8081", "reuseaddr": True,
                                "backlog": 5, "mode": "http10"},
                               {"proto": "udp", "bind": "0.0.0.0:9053"},
                               {"proto": "udp", "bind": "[::]:9054", "v6only": True}])
    stuck = lab.server("stuck", [{"proto": "tcp", "bind": "0.0.0.0:8082", "backlog": 1,
                                  "mode": "noaccept"}])
    req = "GET / HTTP/1.0\r\nHost: x\r\n\r\n"
    # Connection 1: the server closes first (HTTP/1.0) and keeps the 4-tuple in TIME-WAIT.
    lab.client("twcli", [{"op": "tcp", "dst": f"{SRV4}:8081", "src": f"{CLI4}:45000",
                          "reuseaddr": True, "send": req, "until_eof": True, "timeout": 2.0}])
    time.sleep(0.2)
    tw = lab.run(lab.srv, ["ss", "-tan", "state", "time-wait"]).stdout
    # Connection 2: same source port, same 4-tuple, while the server holds it in TIME-WAIT.
    lab.client("twcli", [{"op": "tcp", "dst": f"{SRV4}:8081", "src": f"{CLI4}:45000",
                          "reuseaddr": True, "send": req, "until_eof": True, "timeout": 2.0}])
    lab.client("udpcli", [
        {"op": "udp", "dst": f"{SRV4}:9053", "payload": "v4 datagram"},
        {"op": "udp", "dst": f"[{SRV6}]:9054", "payload": "v6 datagram"},
        {"op": "udp", "dst": f"{SRV4}:9054", "payload": "v4 to a v6only port", "timeout": 0.5},
    ])
    # The accept queue of 'stuck' (backlog 1) takes backlog+1 = 2 connections; the third
    # SYN and its retransmits (1 s apart: tcp_syn_linear_timeouts) are dropped.
    lab.client("fillq", [
        {"op": "tcp", "dst": f"{SRV4}:8082", "send": "queued 1\n", "read": False, "hold": True,
         "timeout": 2.0},
        {"op": "tcp", "dst": f"{SRV4}:8082", "send": "queued 2\n", "read": False, "hold": True,
         "timeout": 2.0},
        {"op": "tcp", "dst": f"{SRV4}:8082", "timeout": 3.5},
        {"op": "close_held"},
    ], timeout=15)
    ss_stuck = lab.run(lab.srv, ["ss", "-tln", "sport", "= :8082"]).stdout
    # One exchange on the server's own loopback, so the pcapng has packets on interface 1.
    _p, llog = lab.client("localcli", [
        {"op": "udp", "dst": "127.0.0.1:9053", "src": "127.0.0.1:40053", "payload": "via lo"}],
        ns=lab.srv)

    def extra(facts):
        fill = [r for r in lab.logs() if r["event"] == "client" and r["server"] == f"{SRV4}:8082"]
        dropped = [r for r in fill if r["result"] == "timeout"]
        syn_counts = {}
        for r in dropped:
            key = f"{r['client']}>{SRV4}:8082"
            syn_counts[key] = facts["syns_by_flow"].get(key, 0)
        return {"time_wait_before_reconnect": tw,
                "accept_queue": {"listener": f"{SRV4}:8082 backlog=1, never accept()ed",
                                 "ss_after": ss_stuck,
                                 "queued_connections": [r["client"] for r in fill
                                                        if r["result"] == "connected"],
                                 "dropped_connections": [r["client"] for r in dropped],
                                 "syns_sent_by_dropped": syn_counts,
                                 "syn_retransmits_ignored": sum(n - 1 for n in syn_counts.values())}}

    finish("mixed-pcapng", outdir, lab, cap,
           "pcapng (dumpcap, eth0 + lo): TIME-WAIT reuse, UDP v4/v6, a full accept queue",
           [web, stuck], local_clients=lambda first: [local_client_process(llog, first)],
           notes=["The second connection from 10.77.0.2:45000 arrives while the server holds the "
                  "first one in TIME-WAIT (time_wait_before_reconnect); its SYN carries a newer "
                  "timestamp, so the kernel reopens the 4-tuple and 'web10' accepts it.",
                  "'stuck' (backlog 1, never calls accept()) completed 2 handshakes "
                  "(sk_acceptq_is_full is ack_backlog > backlog); the third client's SYNs were "
                  "dropped silently (no RST, no SYN-ACK): TcpExtListenOverflows/ListenDrops "
                  "count every dropped SYN. The client retransmitted its SYN every 1 s, not with "
                  "exponential backoff: net.ipv4.tcp_syn_linear_timeouts = 4 (Linux >= 6.x).",
                  "The queued connections' data is ACKed by the kernel and their FINs too "
                  "(the sockets go to CLOSE-WAIT in the queue).",
                  "Interfaces in the pcapng: 0 = eth0 (veth), 1 = lo (the localcli datagram "
                  "and its answer, each seen once)."],
           counters_before=before, extra=extra)


def cap_slow_reader(lab: Lab, outdir: Path) -> None:
    cap = Capture(lab, outdir / "slow-reader.pcap")
    before = proc_counters(lab.srv)
    # SO_RCVBUF 4096 (8192 in the kernel): the window is a few KB, so it closes quickly.
    srv = lab.server("slowread", [{"proto": "tcp", "bind": "0.0.0.0:8090", "rcvbuf": 4096,
                                   "mode": "slowread", "pause": 1.0, "bite": 2048, "bite_pause": 0.02}])
    sizes = (30000, 12000)
    lab.client("bulk", [{"op": "tcp", "dst": f"{SRV4}:8090", "send": "z" * n, "read": False,
                         "timeout": 10.0} for n in sizes], timeout=30)
    wait_for(lambda: sum(1 for r in lab.logs() if r["event"] == "read") == len(sizes), 20,
             "the slow reader to read everything")

    def reads(_facts):
        return {"read": [{"client": r["client"], "bytes": r["bytes"]}
                         for r in sorted(lab.logs(), key=lambda r: r["ts"]) if r["event"] == "read"],
                "sent": list(sizes)}
    finish("slow-reader", outdir, lab, cap,
           "a slow consumer: a client sends 30,000 and 12,000 bytes to a server that reads "
           "nothing for 1 s, then 2 KB every 20 ms, with SO_RCVBUF 4096",
           [srv], notes=["The server's window closes (it ACKs with win 0) and opens again many "
                         "times; the Linux sender waits, probing the zero window with a segment "
                         "one byte behind (seq = snd_una - 1, no data), which the server "
                         "answers with a duplicate ACK and discards (an old segment).",
                         "read[] is what the application read from each connection: every byte "
                         "the client sent."],
           counters_before=before, extra=reads)


CAPTURES = {
    "http4": lambda lab, out: cap_http(lab, out, v6=False),
    "http6": lambda lab, out: cap_http(lab, out, v6=True),
    "dns-udp": cap_dns,
    "scan": cap_scan,
    "reuseport": cap_reuseport,
    "any-sll": lambda lab, out: cap_any(lab, out, "any-sll", "LINUX_SLL"),
    "any-sll2": lambda lab, out: cap_any(lab, out, "any-sll2", "LINUX_SLL2"),
    "mixed-pcapng": cap_mixed,
    "slow-reader": cap_slow_reader,
}


def make(name: str, outdir: Path) -> None:
    """One capture in its own fresh pair of namespaces, torn down whatever happens."""
    for attempt in range(3):
        work = Path(tempfile.mkdtemp(prefix=f"dmx-{name}-"))
        work.chmod(0o755)
        try:
            with Lab(work) as lab:
                CAPTURES[name](lab, outdir)
            return
        except CaptureDropped as e:
            print(f"{name}: capture lost packets ({e}); trying again", file=sys.stderr)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raise RuntimeError(f"{name}: the capture kept losing packets")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_role"]:
        cfg = json.loads(argv[2])
        (role_server if argv[1] == "server" else role_client)(cfg)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(CAPTURES),
                    help="make only this capture (repeatable)")
    ap.add_argument("--outdir", type=Path, default=HERE, help="where to write (default: pcaps/)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("make_captures.py: needs root (network namespaces, tcpdump)", file=sys.stderr)
        return 2
    for tool in ("ip", "tcpdump", "curl") + (("dumpcap",) if not args.only or
                                              "mixed-pcapng" in args.only else ()):
        if not shutil.which(tool):
            print(f"make_captures.py: {tool} not found", file=sys.stderr)
            return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(CAPTURES):
        t0 = time.monotonic()
        make(name, args.outdir)
        print(f"{name}: done in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
