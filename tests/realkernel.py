"""Run a scenario on the real Linux kernel: the oracle the emulator is checked against.

``run_real(scenario, probes)`` builds the scenario's host for real and reports what the
kernel did, in the same terms as ``demux check`` (SPEC §2) and the lookup:

- Two fresh network namespaces, "host" and "peer", joined by one veth pair per host
  interface (``host.interfaces``, else a single ``eth0``). The host side carries the
  scenario's addresses, the peer side one address per host subnet (.2 / ::2, or the
  next free) plus any address a probe or a connect() needs. Only addresses inside
  10.9.0.0/16 and fd9::/16 are ever configured (anything else is refused with
  ValueError), so nothing outside the namespaces is touched.
- The scenario's sysctls are written inside the host namespace, with ICMP rate limits
  switched off there so that every closed UDP port is seen to answer.
- One child process per scenario process, forked into the host namespace and running as
  the process's uid (setuid before any socket), makes that process's socket calls. The
  coordinator (the caller) drives the children one call at a time over a pipe, so the
  global order of calls is the file order, exactly as ``Kernel.from_scenario`` applies it.
- Probes are sent from a child in the peer namespace, all at once, and resolved
  together: a TCP probe by the host child that accept()s it (matched by 4-tuple) or by
  ECONNREFUSED (the RST); a UDP probe by the host socket(s) whose recvfrom() returns its
  token, or by ECONNREFUSED on the peer's connect()ed UDP socket (the ICMP port
  unreachable). A probe that nothing answers within ``quiet`` seconds is ``timed_out``
  (the wait ends as soon as every probe is accounted for, so ``quiet`` costs time only
  when something is really dropped). Before any of that, one datagram per peer address
  to a closed port warms ARP/ND up, so that no probe waits on neighbour resolution.

Limits, on purpose: ``accept = false`` is not honoured (the children accept everything,
since that is how a receiver is identified), and probes leave from the peer namespace
only, so each probe arrives on the host interface that owns the route to its destination
(reported as ``ifname``).

Everything is cleaned up in ``finally``: children killed by pid and reaped, both
namespaces deleted (which also removes the veths).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import itertools
import os
import select
import signal
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable
from multiprocessing import Pipe
from multiprocessing.connection import Connection

from demux.scenario import Scenario, SocketSpec, normalize_address

# Every address configured in a namespace must lie here (the house rule: only
# addresses inside namespaces the test made).
ALLOWED_V4 = ipaddress.ip_network("10.9.0.0/16")
ALLOWED_V6 = ipaddress.ip_network("fd9::/16")

CLONE_NEWNET = 0x40000000
WARM_PORT = 9          # discard: the warm-up datagram expects an ICMP answer from it
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15
_seq = itertools.count()

# Scenario sysctls written into the host namespace, plus what the harness needs there.
_HARNESS_SYSCTLS = {
    # ICMP port unreachable is rate limited per destination (6 then 1/s): switch it
    # off or the 7th closed UDP port would look like a silent drop.
    "net.ipv4.icmp_ratelimit": 0,
    "net.ipv6.icmp.ratelimit": 0,
    "net.ipv4.icmp_msgs_per_sec": 100000,
    "net.ipv4.icmp_msgs_burst": 100000,
    "net.ipv6.conf.all.accept_dad": 0,
    "net.ipv6.conf.default.accept_dad": 0,
}


class RealKernelError(RuntimeError):
    """The harness itself failed (a child died, a namespace could not be made, timeout)."""


@dataclass(frozen=True)
class Probe:
    """One packet (TCP SYN via connect(), or one UDP datagram) from the peer namespace."""

    proto: str                 # "tcp" | "udp"
    src_addr: str              # a peer address (10.9.0.2, fd9::2, ...)
    src_port: int              # 0: the peer kernel picks one (reported as src_port)
    dst_addr: str              # a host address, or a broadcast address for UDP
    dst_port: int
    payload_id: int | None = None   # identifies the UDP datagram; default: probe index


@dataclass
class RealResult:
    calls: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    interfaces: dict[str, list[str]] = field(default_factory=dict)   # host ifname -> addrs
    peer_addresses: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    peer_result: object = None


# ---- small helpers ----------------------------------------------------------------------

def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.strip("[]"))


def _plain(addr: str) -> str:
    """Normalised text of an address, with v4-mapped IPv6 unmapped (as on the wire)."""
    ip = _ip(addr.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return normalize_address(str(ip))[1]


def _fmt(sockname: tuple) -> str:
    """getsockname() as scenario text: ``10.9.0.1:80``, ``[fd9::1]:80``."""
    family, addr = normalize_address(sockname[0].split("%")[0])
    return f"[{addr}]:{sockname[1]}" if len(sockname) == 4 else f"{addr}:{sockname[1]}"


def _is_loopback_or_mapped(addr: str) -> bool:
    ip = _ip(addr)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None)


def _check_allowed(addr: str, what: str) -> None:
    ip = _ip(addr)
    net = ALLOWED_V4 if ip.version == 4 else ALLOWED_V6
    if ip not in net:
        raise ValueError(f"{what} {addr} is outside {net}: the harness only configures "
                         f"addresses in {ALLOWED_V4} and {ALLOWED_V6}")


def _subnet(addr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    ip = _ip(addr)
    return ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False)


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({path}): {os.strerror(e)}")
    finally:
        os.close(fd)


def _ip_batch(lines: list[str], netns: str | None = None, check: bool = True) -> None:
    cmd = ["ip"] + (["-n", netns] if netns else []) + (["-force"] if not check else []) + ["-batch", "-"]
    r = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=10)
    if check and r.returncode != 0:
        raise RealKernelError(f"ip {'-n ' + netns if netns else ''} -batch failed: {r.stderr.strip()}")


# ---- children ---------------------------------------------------------------------------

def child_loop(conn: Connection, ns_path: str, uid: int, factory, comm: str | None = None) -> None:
    """In a forked child, never returning: into the namespace ``ns_path``, named ``comm``,
    as ``uid``; then serve ``factory(conn)``'s requests (op -> function) over ``conn``
    until "exit". The first message says ("ok", pid); an exception is sent back as
    ("exc", traceback)."""
    code = 0
    try:
        _setns(ns_path)
        if comm:
            _libc.prctl(PR_SET_NAME, comm.encode()[:15], 0, 0, 0)
        if uid:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        handlers = factory(conn)
        conn.send(("ok", os.getpid()))
        while True:
            op, args = conn.recv()
            if op == "exit":
                break
            try:
                conn.send(("ok", handlers[op](*args)))
            except Exception:
                conn.send(("exc", traceback.format_exc()))
    except BaseException:
        code = 1
        try:
            conn.send(("exc", traceback.format_exc()))
        except Exception:
            pass
    finally:
        os._exit(code)


def _spawn(ns_path: str, uid: int, handler_factory) -> tuple[int, Connection]:
    """Fork a child into the namespace ``ns_path`` running as ``uid``; it serves requests
    from ``handler_factory()`` (a dict op -> function) over the returned pipe."""
    parent, child = Pipe(duplex=True)
    pid = os.fork()
    if pid == 0:  # child: never returns
        parent.close()
        child_loop(child, ns_path, uid, lambda _conn: handler_factory())
    child.close()
    return pid, parent


class _Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def _send(conn: Connection, op: str, *args) -> None:
    conn.send((op, args))


def _recv(conn: Connection, deadline: _Deadline, who: str):
    if not conn.poll(deadline.left()):
        raise RealKernelError(f"{who}: no answer before the timeout")
    try:
        status, value = conn.recv()
    except EOFError:
        raise RealKernelError(f"{who}: child died") from None
    if status != "ok":
        raise RealKernelError(f"{who}: {value}")
    return value


def _host_handlers():
    """What a scenario process's child does: make sockets, report what arrives."""
    socks: dict[int, socket.socket] = {}
    kinds: dict[int, str] = {}   # "listen" | "udp" | "other"

    def make(si: int, spec: SocketSpec) -> dict:
        family = socket.AF_INET6 if spec.family == 6 else socket.AF_INET
        stype = socket.SOCK_STREAM if spec.proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(family, stype)
        call, local = "socket", None
        try:
            call = "setsockopt"
            if spec.reuseaddr:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if spec.reuseport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and spec.v6only is not None:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(spec.v6only))
            if spec.device:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, spec.device.encode())
            if spec.bind is not None:
                call, local = "bind", str(spec.bind)
                s.bind((spec.bind.addr, spec.bind.port))
            if spec.listen:
                call = "listen"
                s.listen(spec.backlog)
            if spec.connect is not None:
                call = "connect"
                s.settimeout(2.0)
                s.connect((spec.connect.addr, spec.connect.port))
        except OSError as e:
            if call != "bind":
                try:
                    local = _fmt(s.getsockname())
                except OSError:
                    pass
            s.close()
            return {"call": call, "result": _errname(e), "local": local}
        socks[si] = s
        s.setblocking(False)
        kinds[si] = ("listen" if spec.listen else "other") if spec.proto == "tcp" else "udp"
        return {"call": call, "result": "ok", "local": _fmt(s.getsockname())}

    def close(si: int) -> None:
        s = socks.pop(si, None)
        if s is not None:
            s.close()

    def drain(wait: float) -> list:
        """Everything that has arrived: accepted connections and datagrams."""
        p = select.poll()
        byfd = {}
        for si, s in socks.items():
            if kinds[si] in ("listen", "udp"):
                p.register(s, select.POLLIN)
                byfd[s.fileno()] = si
        events = []
        timeout = int(wait * 1000)
        while byfd:
            ready = p.poll(timeout)
            timeout = 0
            if not ready:
                break
            for fd, _ in ready:
                si = byfd[fd]
                s = socks[si]
                try:
                    if kinds[si] == "listen":
                        conn, peer = s.accept()
                        events.append(("tcp", si, peer[:2], conn.getsockname()[:2]))
                        conn.close()
                    else:
                        data, peer = s.recvfrom(4096)
                        events.append(("udp", si, peer[:2], data))
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    # e.g. a pending ICMP error on a connected UDP socket: not a delivery
                    events.append(("err", si, _errname(e), None))
        return events

    return {"make": make, "close": close, "drain": drain}


def _peer_handlers():
    """The peer namespace: listeners for the scenario's TCP connect()s, and the probes."""
    listeners: list[socket.socket] = []
    probes: dict[int, tuple[str, socket.socket]] = {}
    final: dict[int, str] = {}

    def listen(endpoints: list[tuple[str, int]]) -> None:
        for addr, port in endpoints:
            s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(4096)
            listeners.append(s)

    def start(batch: list[tuple[int, str, str, int, str, int, bytes]]) -> dict[int, object]:
        out: dict[int, object] = {}
        for i, proto, src, sport, dst, dport, token in batch:
            family = socket.AF_INET6 if ":" in dst else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if proto == "udp" and family == socket.AF_INET:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                s.bind((src, sport))
                s.setblocking(False)
                if proto == "tcp":
                    rc = s.connect_ex((dst, dport))
                    if rc not in (0, errno.EINPROGRESS):
                        raise OSError(rc, os.strerror(rc))
                else:
                    s.connect((dst, dport))
                    s.send(token)
                out[i] = s.getsockname()[1]
                probes[i] = (proto, s)
            except OSError as e:
                s.close()
                out[i] = "error " + _errname(e)
        return out

    def status() -> dict[int, str]:
        """Per probe: tcp "connected" | "refused" | "pending"; udp "icmp" | "quiet"."""
        p = select.poll()
        pending = {}
        for i, (proto, s) in probes.items():
            if i in final:
                continue
            if proto == "tcp":
                p.register(s, select.POLLOUT)
                pending[s.fileno()] = i
            else:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == errno.ECONNREFUSED:
                    final[i] = "icmp"
                elif err:
                    final[i] = "error " + errno.errorcode.get(err, str(err))
        for fd, _ in p.poll(0):
            i = pending[fd]
            err = probes[i][1].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            final[i] = ("connected" if err == 0 else "refused" if err == errno.ECONNREFUSED
                        else "error " + errno.errorcode.get(err, str(err)))
        return {i: final.get(i, "pending" if proto == "tcp" else "quiet")
                for i, (proto, _) in probes.items()}

    def warm(pairs: list[tuple[str, str]], wait: float) -> list[str]:
        """One datagram from each peer address to a closed port of a host address, and
        wait for the ICMP answer: ARP/ND are then resolved both ways, so the probes that
        follow are not held (or lost) in a neighbour queue. Returns the pairs that failed."""
        socks = []
        for src, dst in pairs:
            s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((src, 0))
            s.connect((dst, WARM_PORT))
            s.send(b"demux-warmup")
            socks.append((f"{src}->{dst}", s))
        end = time.monotonic() + wait
        while socks and time.monotonic() < end:
            socks = [(n, s) for n, s in socks
                     if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != errno.ECONNREFUSED]
            time.sleep(0.001)
        for _, s in socks:
            s.close()
        return [n for n, _ in socks]

    def call(fn, args):
        return fn(*args)

    return {"listen": listen, "start": start, "status": status, "warm": warm, "call": call}


# ---- the run ----------------------------------------------------------------------------

def _plan(scenario: Scenario, probes: list[Probe]):
    """Host interfaces with their addresses, and the peer's address per veth."""
    host_ifaces: dict[str, list[str]] = {k: list(v) for k, v in scenario.host.interfaces.items()}
    if not host_ifaces:
        host_ifaces = {"eth0": []}
    listed = {a for v in host_ifaces.values() for a in v}
    first = next(iter(host_ifaces))
    for a in scenario.host.addresses:
        if a not in listed:
            host_ifaces[first].append(a)
            listed.add(a)
    host_local = set()
    for ifname, addrs in host_ifaces.items():
        host_ifaces[ifname] = [a for a in addrs if not _is_loopback_or_mapped(a)]
        for a in host_ifaces[ifname]:
            _check_allowed(a, "host address")
            host_local.add(_plain(a))
    peer: dict[str, list[str]] = {ifname: [] for ifname in host_ifaces}
    subnets: list[tuple[object, str]] = []
    for ifname, addrs in host_ifaces.items():
        for a in addrs:
            net = _subnet(a)
            if any(net == n for n, _ in subnets):
                continue
            subnets.append((net, ifname))
            for cand in itertools.islice(net.hosts(), 1, 64):
                if _plain(str(cand)) not in host_local:
                    peer[ifname].append(_plain(str(cand)))
                    break
    needed = [p.src_addr for p in probes]
    needed += [s.connect.addr for pr in scenario.processes for s in pr.sockets
               if s.connect is not None and not _is_loopback_or_mapped(s.connect.addr)
               and _plain(s.connect.addr) not in host_local]
    for a in needed:
        a = _plain(a)
        if a in host_local:
            raise ValueError(f"peer address {a} is also a host address")
        _check_allowed(a, "peer address")
        if any(a in v for v in peer.values()):
            continue
        home = next((ifn for net, ifn in subnets if _ip(a) in net), None)
        if home is None:
            raise ValueError(f"peer address {a} is in no host subnet "
                             f"({', '.join(str(n) for n, _ in subnets) or 'none'})")
        peer[home].append(a)
    return host_ifaces, peer, subnets, host_local


def _sysctl_writer(values: dict[str, object]):
    def factory():
        for key, value in values.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(str(value))
        return {}
    return factory


def run_real(scenario: Scenario, probes: list[Probe] | Callable[[list[dict]], list[Probe]] = (),
             timeout: float = 20, quiet: float = 1.0, settle: float = 0.05,
             peer_call: tuple[Callable, tuple] | None = None) -> RealResult:
    """Apply the scenario's socket calls on the real kernel, then send ``probes``.

    ``probes`` may be a function of the call outcomes (``RealResult.calls``), for probes
    aimed at ports the kernel chose; its probes must come from addresses the peer has
    anyway (10.9.0.2 / fd9::2 and the like, one per host subnet).
    ``peer_call``: ``(function, args)`` run in the peer namespace after the probes (for
    what sockets cannot send, e.g. a raw segment); its return value is ``peer_result``.
    ``quiet``: how long a probe may go unanswered before it counts as timed out.
    ``settle``: how long after sending to collect copies of broadcast datagrams.
    """
    make_probes = probes if callable(probes) else None
    probes = [] if make_probes else list(probes)
    host_ifaces, peer_ifaces, subnets, host_local = _plan(scenario, probes)
    deadline = _Deadline(timeout)
    tag = f"{os.getpid()}-{next(_seq)}"
    hns, pns = f"demux-h-{tag}", f"demux-p-{tag}"
    children: list[int] = []
    result = RealResult(interfaces={k: list(v) for k, v in host_ifaces.items()},
                        peer_addresses=[a for v in peer_ifaces.values() for a in v])
    try:
        # -- namespaces and veths, three `ip` runs in all
        lines = [f"netns add {hns}", f"netns add {pns}"]
        veth = {ifname: f"p{k}" for k, ifname in enumerate(host_ifaces)}
        for ifname, pname in veth.items():
            lines.append(f"link add name {ifname} netns {hns} type veth peer name {pname} netns {pns}")
        _ip_batch(lines)

        def addr_lines(ifaces: dict[str, list[str]], names: dict[str, str]) -> list[str]:
            out = ["link set lo up"]
            for ifname, addrs in ifaces.items():
                dev = names[ifname]
                for a in addrs:
                    if _ip(a).version == 4:
                        out.append(f"addr add {a}/24 brd + dev {dev}")
                    else:
                        out.append(f"addr add {a}/64 dev {dev} nodad")
                out.append(f"link set {dev} up")
            return out

        # sysctls first: accept_dad off before the links come up
        sysctls = dict(_HARNESS_SYSCTLS)
        for key in ("net.ipv4.ip_local_port_range", "net.ipv4.ip_local_reserved_ports",
                    "net.ipv4.ip_unprivileged_port_start", "net.ipv6.bindv6only",
                    "net.ipv4.tcp_tw_reuse", "net.core.somaxconn", "net.ipv4.ip_nonlocal_bind",
                    "net.ipv6.ip_nonlocal_bind"):
            if key in scenario.sysctl:
                sysctls[key] = scenario.sysctl[key]
        if sysctls.get("net.ipv4.ip_local_reserved_ports") == "":
            sysctls["net.ipv4.ip_local_reserved_ports"] = "\n"   # an empty write is refused
        pid, conn = _spawn(f"/run/netns/{hns}", 0, _sysctl_writer(sysctls))
        children.append(pid)
        _recv(conn, deadline, "sysctl writer")
        _send(conn, "exit")
        os.waitpid(pid, 0)
        children.remove(pid)

        _ip_batch(addr_lines(host_ifaces, {k: k for k in host_ifaces}), hns)
        _ip_batch(addr_lines(peer_ifaces, veth), pns)

        # -- the peer: listeners for the scenario's TCP connect()s to peer addresses
        ppid, peer = _spawn(f"/run/netns/{pns}", 0, _peer_handlers)
        children.append(ppid)
        _recv(peer, deadline, "peer")
        targets = sorted({(s.connect.addr, s.connect.port) for pr in scenario.processes
                          for s in pr.sockets if s.proto == "tcp" and s.connect is not None
                          and _plain(s.connect.addr) in result.peer_addresses})
        _send(peer, "listen", targets)
        _recv(peer, deadline, "peer listen")
        pairs = []
        for ifname, addrs in peer_ifaces.items():
            for src in addrs:
                dst = next((h for h in host_ifaces[ifname] if _ip(h) in _subnet(src)), None)
                if dst and (src, dst) not in pairs:
                    pairs.append((src, dst))
        # before any host socket exists, so port 9 is closed and answers
        _send(peer, "warm", pairs, min(2.0, deadline.left()))
        result.warnings += [f"warm-up {n}: no ICMP answer" for n in _recv(peer, deadline, "peer warm-up")]

        # -- one child per scenario process
        conns: list[Connection] = []
        for pi, proc in enumerate(scenario.processes):
            pid, conn = _spawn(f"/run/netns/{hns}", proc.uid, _host_handlers)
            children.append(pid)
            _recv(conn, deadline, f"process {proc.name}")
            conns.append(conn)

        # -- socket calls in scenario order: no `at` first (file order), then by time
        events = []
        for pi, proc in enumerate(scenario.processes):
            for si, spec in enumerate(proc.sockets):
                t = -1.0 if spec.at is None else spec.at
                events.append((t, 0, pi, si, "make", spec))
                if spec.close_at is not None:
                    events.append((spec.close_at, 1, pi, si, "close", spec))
        events.sort(key=lambda e: (e[0], e[1]))   # stable: file order within a time
        for _, _, pi, si, op, spec in events:
            who = f"process {scenario.processes[pi].name} socket {si}"
            if op == "make":
                _send(conns[pi], "make", si, spec)
                out = _recv(conns[pi], deadline, who)
                result.calls.append({"proc": pi, "sock": si, "index": (pi, si),
                                     "process": scenario.processes[pi].name,
                                     "proto": spec.proto, **out})
            else:
                _send(conns[pi], "close", si)
                _recv(conns[pi], deadline, who)

        if make_probes:
            probes = list(make_probes(result.calls))
            for p in probes:
                if _plain(p.src_addr) not in result.peer_addresses:
                    raise ValueError(f"probe source {p.src_addr} is not a peer address "
                                     f"({', '.join(result.peer_addresses)})")
        for p in probes:
            if p.proto not in ("tcp", "udp"):
                raise ValueError(f"probe proto must be tcp or udp: {p}")
        if probes:
            result.probes = _run_probes(probes, peer, conns, subnets, deadline, quiet, settle)
        if peer_call is not None:
            _send(peer, "call", *peer_call)
            result.peer_result = _recv(peer, deadline, "peer call")
        for conn in [peer, *conns]:
            _send(conn, "exit")
        return result
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        _ip_batch([f"netns del {hns}", f"netns del {pns}"], check=False)


def _run_probes(probes, peer, conns, subnets, deadline, quiet, settle) -> list[dict]:
    out = []
    batch = []
    for i, p in enumerate(probes):
        pid_ = i if p.payload_id is None else p.payload_id
        token = f"demux-probe {pid_}".encode()
        home = next((ifn for net, ifn in subnets if _ip(p.dst_addr) in net), None)
        out.append({"probe": p, "index": i, "token": token, "receivers": [], "refused": None,
                    "timed_out": False, "src_port": p.src_port, "ifname": home, "error": None})
        batch.append((i, p.proto, p.src_addr, p.src_port, p.dst_addr, p.dst_port, token))
    _send(peer, "start", batch)
    t0 = time.monotonic()
    for i, sport in _recv(peer, deadline, "peer start").items():
        if isinstance(sport, str):
            out[i]["error"] = sport
        else:
            out[i]["src_port"] = sport
    by_tuple = {(_plain(r["probe"].src_addr), r["src_port"], _plain(r["probe"].dst_addr),
                 r["probe"].dst_port): r for r in out if r["probe"].proto == "tcp"}
    by_token = {r["token"]: r for r in out if r["probe"].proto == "udp"}

    def unicast(r) -> bool:
        ip = _ip(r["probe"].dst_addr)
        if ip.is_multicast:
            return False
        if ip.version == 4:
            return all(ip != n.broadcast_address for n, _ in subnets if n.version == 4) \
                and str(ip) != "255.255.255.255"
        return True

    while True:
        for conn in conns:
            _send(conn, "drain", 0.005)
        for pi, conn in enumerate(conns):
            for kind, si, peer_addr, extra in _recv(conn, deadline, f"process {pi} drain"):
                if kind == "tcp":
                    key = (_plain(peer_addr[0]), peer_addr[1], _plain(extra[0]), extra[1])
                    r = by_tuple.get(key)
                elif kind == "udp":
                    r = by_token.get(extra)
                else:
                    r = None
                if r is not None:
                    r["receivers"].append((pi, si))
        _send(peer, "status")
        status = _recv(peer, deadline, "peer status")
        now = time.monotonic() - t0
        done = True
        for r in out:
            if r["error"]:
                continue
            st = status.get(r["index"])
            if r["probe"].proto == "tcp":
                if st == "refused":
                    r["refused"] = "rst"
                elif st == "pending" or (st == "connected" and not r["receivers"]):
                    done = False
                elif st and st.startswith("error"):
                    r["error"] = st
            else:
                if st == "icmp":
                    r["refused"] = "icmp-port-unreachable"
                elif st and st.startswith("error"):
                    r["error"] = st
                elif unicast(r):
                    if not r["receivers"]:
                        done = False
                elif now < settle:
                    done = False
        if done or now >= quiet:
            break
    for r in out:
        st = status.get(r["index"])
        if not r["error"] and not r["receivers"] and r["refused"] is None:
            r["timed_out"] = True
        if r["probe"].proto == "tcp" and st == "connected" and not r["receivers"]:
            r["error"] = "connected but no host socket accepted it"
        r["receivers"].sort()
        del r["token"]
    return out
