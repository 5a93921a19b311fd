"""Real sockets, real conversations, a real capture: the oracle for replay and ss.

``realkernel.run_real`` answers "which socket takes this SYN or datagram". The
end-to-end tests need more: whole conversations on the wire, captured by tcpdump, and
the socket table as iproute2's ``ss`` reads it. This module gives them a ``Lab``:

- Two fresh namespaces, host and peer, joined by one veth (``eth0`` on the host side)
  with fixed MACs and *permanent* neighbour entries both ways, so no ARP or ND packet
  ever delays, reorders or joins the traffic. IPv6 link-local addresses are not
  generated (``addrgenmode none``) and DAD is off, so the link stays quiet. Only
  addresses inside 10.9.0.0/16 and fd9::/16 are configured (``realkernel``'s rule).
- The host namespace keeps the kernel's default ICMP rate limits
  (IPv4 ``icmp_ratelimit`` 1000 ms, IPv6 ``icmp.ratelimit`` 100 ms, burst 6 per
  destination) on purpose: the emulator claims
  to model them, so the tests see which port-unreachables really leave. ``Lab`` checks
  the defaults are in force rather than assuming it.
- ``Lab.host(name, uid)`` forks a scenario process into the host namespace: its comm is
  ``name`` (what ``ss -p`` prints), it runs as ``uid``, and its descriptor table is
  emptied down to 0-2 (the control pipe moves to a high number), so its sockets get 3,
  4, 5... and accept() the lowest free one, as the emulator assumes of a fresh process.
  ``make`` applies one scenario socket; ``serve`` answers everything that arrives
  (accepts, echoes TCP data and closes when the peer does, echoes datagrams) and
  reports each delivery with the socket that received it.
- ``Lab.peer()`` drives the clients from the peer namespace: ``flows`` opens every flow
  at once (TCP: connect, send a token, read the echo, close -- or hold it open; UDP: a
  datagram from a connect()ed socket, then the answer, the ICMP error or silence) and
  reports per flow its source port and outcome.
- ``Lab.capture(path)`` runs tcpdump on the host's eth0
  (``-s 0 -U --immediate-mode -B 65536 -w``, as ``pcaps/make_captures.py`` learnt to),
  waits until it listens, and on ``stop()`` waits for the file to stop growing, stops it
  and refuses the capture if tcpdump reports a single dropped packet.

Every wait has a deadline; ``Lab.__exit__`` kills the children it forked (by pid) and
deletes both namespaces, whatever happened.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import signal
import socket
import subprocess
import time
from multiprocessing.connection import Connection
from pathlib import Path

from demux.scenario import SocketSpec
from realkernel import RealKernelError, _check_allowed, _errname, _fmt, _ip, _ip_batch, _plain, child_loop

HOST_MAC, PEER_MAC = "02:09:00:00:00:01", "02:09:00:00:00:02"
CTL_FD = 250            # where a child's control pipe lives, out of the way of its sockets
_count = [0]
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)      # Python 3.11 lacks the name (linux/in.h)
_PKTINFO = {(socket.IPPROTO_IP, IP_PKTINFO), (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)}

# Kernel defaults the rate-limit comparison relies on (checked, never written). On 6.18
# the IPv6 one is 100 ms, not 1000, and icmpv6_xrlim_allow divides it further by 4 for a
# /64 route ((128 - 64) >> 5 = 2 halvings): 25 ms a token, still a burst of 6.
ICMP_DEFAULTS = {"net.ipv4.icmp_ratelimit": "1000", "net.ipv4.icmp_ratemask": "6168",
                 "net.ipv6.icmp.ratelimit": "100"}


class CaptureDropped(RealKernelError):
    """tcpdump said it dropped packets: the capture has holes and proves nothing."""


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


# ---- children ---------------------------------------------------------------------------

def _fork(ns_path: str, uid: int, comm: str | None, factory) -> tuple[int, Connection]:
    """A child in ``ns_path`` as ``uid`` named ``comm``, with only fds 0-2 and its control
    pipe; it serves ``factory(ctl)`` (op -> function) until told ``exit``."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            # Objects inherited from the parent may own fds about to be closed; a collection
            # finalising one would close whatever socket reuses that number.
            gc.disable()
            a.close()
            os.dup2(b.detach(), CTL_FD)
            os.closerange(3, CTL_FD)
            os.closerange(CTL_FD + 1, 65536)
            ctl = Connection(CTL_FD)
        except BaseException:
            os._exit(1)
        child_loop(ctl, ns_path, uid, factory, comm)
    b.close()
    return pid, Connection(a.detach())


class Child:
    """The coordinator's end of one forked child."""

    def __init__(self, lab: "Lab", ns: str, uid: int, comm: str | None, factory, what: str):
        self.what = what
        self.pid, self.conn = _fork(f"/run/netns/{ns}", uid, comm, factory)
        lab.children.append(self.pid)
        self.call_started = None
        self.answer(10)

    def start(self, op: str, *args) -> None:
        self.conn.send((op, args))

    def answer(self, timeout: float):
        if not self.conn.poll(timeout):
            raise RealKernelError(f"{self.what}: no answer within {timeout} s")
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RealKernelError(f"{self.what}: child died") from None
        if status != "ok":
            raise RealKernelError(f"{self.what}: {value}")
        return value

    def call(self, op: str, *args, timeout: float = 10):
        self.start(op, *args)
        return self.answer(timeout)


def _host_factory(ctl: Connection):
    socks: dict[int, socket.socket] = {}
    kinds: dict[int, str] = {}          # "listen" | "udp" | "other"
    conns: dict[int, tuple[int, socket.socket]] = {}    # fd -> (listener index, socket)

    def make(si: int, spec: SocketSpec) -> dict:
        family = socket.AF_INET6 if spec.family == 6 else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM if spec.proto == "tcp" else socket.SOCK_DGRAM)
        fd = s.fileno()
        call = "socket"
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
                call = "bind"
                s.bind((spec.bind.addr, spec.bind.port))
            if spec.listen:
                call = "listen"
                s.listen(spec.backlog)
            if spec.connect is not None:
                call = "connect"
                s.settimeout(2.0)
                s.connect((spec.connect.addr, spec.connect.port))
        except OSError as e:
            s.close()
            return {"call": call, "result": _errname(e), "local": None, "fd": fd}
        s.setblocking(False)
        if spec.proto == "udp":
            # Answer from the address the datagram was sent to, not the one routing
            # picks (10.9.0.1 for a datagram to 10.9.0.3), as a real UDP server must.
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        socks[si] = s
        kinds[si] = ("listen" if spec.listen else "other") if spec.proto == "tcp" else "udp"
        peer = None
        if spec.connect is not None:
            peer = _fmt(s.getpeername())
        return {"call": call, "result": "ok", "local": _fmt(s.getsockname()), "fd": fd, "peer": peer}

    def serve(echo: bool = True, hold: bool = False) -> list:
        """Answer what arrives until the coordinator sends anything on the pipe; return
        the deliveries: ("tcp", si, peer, local, fd, bytes) and ("udp", si, peer, data)."""
        p = select.poll()
        p.register(ctl.fileno(), select.POLLIN)
        byfd: dict[int, int] = {}
        for si, s in socks.items():
            if kinds[si] in ("listen", "udp"):
                p.register(s, select.POLLIN)
                byfd[s.fileno()] = si
        for cfd in conns:
            p.register(cfd, select.POLLIN)
        tcp_events: dict[int, list] = {}
        events: list = []
        stop = False
        while not stop:
            for fd, ev in p.poll(5000):
                if fd == ctl.fileno():
                    stop = True
                    continue
                if fd in byfd:
                    si = byfd[fd]
                    s = socks[si]
                    try:
                        if kinds[si] == "listen":
                            c, peer = s.accept()
                            c.setblocking(False)
                            rec = ["tcp", si, tuple(peer[:2]), tuple(c.getsockname()[:2]), c.fileno(), 0]
                            conns[c.fileno()] = (si, c)
                            tcp_events[c.fileno()] = rec
                            events.append(rec)
                            p.register(c, select.POLLIN)
                        else:
                            data, anc, _, peer = s.recvmsg(65536, 256)
                            events.append(["udp", si, tuple(peer[:2]), data])
                            if echo:
                                # the pktinfo as received names the destination address,
                                # which sendmsg takes as the source (v4-mapped included)
                                s.sendmsg([data], [a for a in anc if a[:2] in _PKTINFO], 0, peer)
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError as e:
                        events.append(["err", si, _errname(e), None])
                elif fd in conns:
                    si, c = conns[fd]
                    try:
                        data = c.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        data = b""
                        events.append(["err", si, _errname(e), None])
                    if data:
                        tcp_events[fd][5] += len(data)
                        if echo:
                            c.send(data)
                    elif not hold:
                        # The peer closed: close too, so both FINs and the last ACK are
                        # on the wire and no connection is left half-open.
                        p.unregister(fd)
                        del conns[fd]
                        c.close()
        ctl.recv()     # the stop message itself
        return events

    def close_all() -> None:
        for _, c in list(conns.values()):
            c.close()
        conns.clear()

    return {"make": make, "serve": serve, "close_all": close_all}


def _peer_factory(ctl: Connection):
    held: list[socket.socket] = []

    def flows(todo: list[dict], quiet: float, hold: bool = False) -> dict:
        """Start every flow at once and follow each to its end (or ``quiet`` s).

        A flow: {"id", "proto", "src", "sport" (0: any), "dst", "dport", "token"}.
        Outcomes: tcp "closed" (echo read, both FINs) | "held" | "refused" | "timeout";
        udp "reply" | "icmp" | "silent"; or "error ...".
        """
        st: dict[int, dict] = {}
        for f in todo:
            fam = socket.AF_INET6 if ":" in f["dst"] else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM if f["proto"] == "tcp" else socket.SOCK_DGRAM)
            r = {"sock": s, "flow": f, "phase": "connect", "buf": b"", "outcome": None, "sport": None}
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((f["src"], f.get("sport", 0)))
                s.setblocking(False)
                if f["proto"] == "tcp":
                    rc = s.connect_ex((f["dst"], f["dport"]))
                    if rc not in (0, errno.EINPROGRESS):
                        raise OSError(rc, os.strerror(rc))
                else:
                    s.connect((f["dst"], f["dport"]))
                    s.send(f["token"])
                    r["phase"] = "answer"
                r["sport"] = s.getsockname()[1]
            except OSError as e:
                r["outcome"] = "error " + _errname(e)
                s.close()
            st[s.fileno() if r["outcome"] is None else -1 - f["id"]] = r
        end = time.monotonic() + quiet
        live = {fd: r for fd, r in st.items() if r["outcome"] is None}
        while live and time.monotonic() < end:
            p = select.poll()
            for fd, r in live.items():
                p.register(fd, select.POLLOUT if r["phase"] == "connect" else select.POLLIN)
            for fd, ev in p.poll(max(1, int((end - time.monotonic()) * 1000))):
                r = live[fd]
                s, f = r["sock"], r["flow"]
                try:
                    if r["phase"] == "connect":
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise OSError(err, os.strerror(err))
                        s.send(f["token"])
                        r["phase"] = "echo"
                    elif f["proto"] == "udp":
                        r["buf"] = s.recv(65536)
                        r["outcome"] = "reply"
                    elif r["phase"] == "echo":
                        data = s.recv(65536)
                        r["buf"] += data
                        if not data:
                            r["outcome"] = "error early EOF"
                        elif len(r["buf"]) >= len(f["token"]):
                            if hold:
                                r["outcome"] = "held"
                            else:
                                s.shutdown(socket.SHUT_WR)
                                r["phase"] = "fin"
                    else:   # fin: wait for the host's FIN so the close is complete
                        if s.recv(65536) == b"":
                            r["outcome"] = "closed"
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    if e.errno == errno.ECONNREFUSED:
                        r["outcome"] = "refused" if f["proto"] == "tcp" else "icmp"
                    else:
                        r["outcome"] = "error " + _errname(e)
                if r["outcome"] is not None:
                    del live[fd]
        out = {}
        for r in st.values():
            f = r["flow"]
            if r["outcome"] is None:
                r["outcome"] = "timeout" if f["proto"] == "tcp" else "silent"
            if r["outcome"] == "held":
                held.append(r["sock"])
            elif r["outcome"] is not None and not r["outcome"].startswith("error"):
                r["sock"].close()
            out[f["id"]] = {"sport": r["sport"], "outcome": r["outcome"]}
        return out

    def release() -> None:
        for s in held:
            s.close()
        held.clear()

    return {"flows": flows, "release": release}


# ---- the capture ------------------------------------------------------------------------

class Capture:
    """tcpdump on the host's eth0, started and stopped with deadlines."""

    def __init__(self, lab: "Lab", path: Path):
        self.path = Path(path)
        self.err_path = self.path.with_suffix(".tcpdump.err")
        self.err = open(self.err_path, "w+")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.hns, "tcpdump", "-i", "eth0", "-s", "0", "-U",
             "--immediate-mode", "-B", "65536", "-n", "-Z", "root", "-w", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=self.err, start_new_session=True)
        lab.captures.append(self)
        end = time.monotonic() + 10
        while "listening on" not in self.err_path.read_text():
            if self.proc.poll() is not None:
                raise RealKernelError(f"tcpdump failed: {self.err_path.read_text().strip()}")
            if time.monotonic() > end:
                raise RealKernelError("tcpdump did not start listening within 10 s")
            time.sleep(0.01)
        time.sleep(0.05)    # the message comes just after the socket is bound; be safe
        self.said: list[str] = []

    def stop(self) -> list[str]:
        """Stop once the file has been still for a moment; raise CaptureDropped on drops."""
        end = time.monotonic() + 3
        size, since = -1, time.monotonic()
        while time.monotonic() < end:
            now = self.path.stat().st_size if self.path.exists() else 0
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since > 0.1:
                break
            time.sleep(0.02)
        self.kill(signal.SIGINT)
        self.said = [l.strip() for l in self.err_path.read_text().splitlines() if l.strip()]
        dropped = [l for l in self.said if l.endswith("dropped by kernel")]
        if not dropped:
            raise RealKernelError(f"tcpdump gave no statistics: {self.said}")
        if any(not l.startswith("0 ") for l in dropped):
            raise CaptureDropped("; ".join(dropped))
        return self.said

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        self.err.close()


# ---- the lab ----------------------------------------------------------------------------

class Lab:
    """Host and peer namespaces on one veth; see the module docstring."""

    def __init__(self, host_addrs: list[str], peer_addrs: list[str]):
        for a in host_addrs + peer_addrs:
            _check_allowed(a, "address")
        self.host_addrs, self.peer_addrs = list(host_addrs), list(peer_addrs)
        _count[0] += 1
        tag = f"{os.getpid()}-{_count[0]}"
        self.hns, self.pns = f"dmxc-h-{tag}", f"dmxc-p-{tag}"
        self.children: list[int] = []
        self.captures: list[Capture] = []

    def __enter__(self) -> "Lab":
        try:
            self._setup()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _setup(self) -> None:
        _ip_batch([f"netns add {self.hns}", f"netns add {self.pns}",
                   f"link add name eth0 netns {self.hns} address {HOST_MAC} type veth "
                   f"peer name p0 netns {self.pns} address {PEER_MAC}"])

        def side(dev: str, mine: list[str], theirs: list[str], mac: str) -> list[str]:
            out = ["link set lo up", f"link set dev {dev} addrgenmode none"]
            for a in mine:
                out.append(f"addr add {a}/24 brd + dev {dev}" if _ip(a).version == 4
                           else f"addr add {a}/64 dev {dev} nodad")
            out.append(f"link set {dev} up")
            out += [f"neigh replace {a} lladdr {mac} dev {dev} nud permanent" for a in theirs]
            return out

        for ns in (self.hns, self.pns):
            self.sysctl(ns, {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
                             "net.ipv6.conf.default.addr_gen_mode": 1})
        _ip_batch(side("eth0", self.host_addrs, self.peer_addrs, PEER_MAC), self.hns)
        _ip_batch(side("p0", self.peer_addrs, self.host_addrs, HOST_MAC), self.pns)
        got = self.read_sysctls(self.hns, list(ICMP_DEFAULTS))
        if got != ICMP_DEFAULTS:
            raise RealKernelError(f"ICMP rate limits are not the kernel defaults: {got}")

    def _ns_exec(self, ns: str, fn, *args, uid: int = 0):
        ch = Child(self, ns, uid, None, lambda ctl: {"run": fn}, f"helper in {ns}")
        try:
            return ch.call("run", *args)
        finally:
            ch.start("exit")
            self.reap(ch.pid)

    def sysctl(self, ns: str, values: dict) -> None:
        def write(vals):
            for k, v in vals.items():
                with open(_sysctl_path(k), "w") as f:
                    f.write(str(v))
        self._ns_exec(ns, write, values)

    def read_sysctls(self, ns: str, keys: list[str]) -> dict:
        def read(ks):
            return {k: open(_sysctl_path(k)).read().strip() for k in ks}
        return self._ns_exec(ns, read, keys)

    def host(self, name: str, uid: int = 0) -> Child:
        return Child(self, self.hns, uid, name, _host_factory, f"host process {name}")

    def peer(self) -> Child:
        return Child(self, self.pns, 0, "demux-peer", _peer_factory, "peer")

    def capture(self, path) -> Capture:
        return Capture(self, Path(path))

    def run(self, ns: str, argv: list[str], timeout: float = 10) -> str:
        r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RealKernelError(f"{' '.join(argv)} in {ns}: {r.stderr.strip()}")
        return r.stdout

    def reap(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        if pid in self.children:
            self.children.remove(pid)

    def __exit__(self, *exc) -> None:
        for cap in self.captures:
            cap.kill()
        for pid in list(self.children):
            self.reap(pid)
        _ip_batch([f"netns del {self.hns}", f"netns del {self.pns}"], check=False)


def plain(addr: str) -> str:
    """An address as it appears on the wire (v4-mapped unmapped, compressed)."""
    return _plain(addr)
