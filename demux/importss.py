"""A scenario from a socket listing: saved ``ss -tulnpe`` / ``ss -tuanp`` output (SPEC §7).

``parse_ss`` reads the text iproute2's ss prints, in the styles it has had: with or
without the Netid and State columns, ``users:(("nginx",pid=1201,fd=6))`` or the old
``users:(("nginx",1201,6))``, ``-e`` extras (``uid:``, ``ino:``, ``v6only:``), ``%dev``
suffixes (SO_BINDTODEVICE), service names where ``-n`` was not given, ``*`` for the
dual-stack wildcard (old versions meant 0.0.0.0 by it and wrote ``:::80`` for IPv6).

``build`` turns listed sockets (``Row``; ``demux.snapshot`` makes them too) into a
scenario. A listing does not show SO_REUSEADDR or SO_REUSEPORT; where they are unknown
and two sockets share a port in a way the kernel allows only with SO_REUSEPORT, it is
assumed, and a comment says so.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field

from demux.errors import DemuxError
from demux.scenario import (SYSCTL_DEFAULTS, Endpoint, HostSpec, ProcessSpec, Scenario,
                            SocketSpec, normalize_address)

NETIDS = {"tcp", "udp", "raw", "u_str", "u_dgr", "u_seq", "p_raw", "p_dgr", "nl", "mptcp",
          "sctp", "tipc", "v_str", "v_dgr", "xdp", "dccp"}
STATES = {"LISTEN", "UNCONN", "ESTAB", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2",
          "TIME-WAIT", "CLOSE", "CLOSE-WAIT", "LAST-ACK", "CLOSING", "UNKNOWN", "NEW-SYN-RECV",
          "BOUND"}
_USER = re.compile(r'\("((?:[^"\\]|\\.)*)",(?:pid=)?(\d+),(?:fd=)?(\d+)\)')
_EXTRA = re.compile(r"\b(uid|ino|v6only):(\d+)")
# Noise ss writes to stderr, often saved with 2>&1.
_NOISE = ("Failed to find cgroup2 mount",)


@dataclass
class Row:
    """One socket as a listing shows it; None where the listing does not say."""

    proto: str
    state: str
    local: Endpoint
    peer: Endpoint | None = None                  # None: not connected
    device: str | None = None
    backlog: int | None = None
    uid: int | None = None
    inode: int | None = None
    users: list[tuple[str, int, int]] = field(default_factory=list)   # (name, pid, fd)
    v6only: bool | None = None
    reuseaddr: bool | None = None
    reuseport: bool | None = None
    where: str = ""                               # file:line, for comments and errors


# ---- reading ss text -------------------------------------------------------------------

def _port(text: str, proto: str, where: str) -> int:
    if text.isdigit():
        p = int(text)
        if p > 65535:
            raise DemuxError(f"{where}: port {p} out of range")
        return p
    try:
        return socket.getservbyname(text, proto)
    except OSError:
        pass
    from demux.services import builtin_table
    for (port, pr), name in builtin_table().items():
        if name == text and pr == proto:
            return port
    raise DemuxError(f"{where}: unknown service name {text!r} (save ss output with -n)")


def _split_addr(text: str, where: str) -> tuple[str, str | None, str]:
    """``ADDR[%DEV]:PORT`` (IPv6 bracketed, or bare as old ss wrote it) -> addr, dev, port."""
    if text.startswith("["):
        addr, sep, rest = text[1:].partition("]")
        if not sep:
            raise DemuxError(f"{where}: bad address {text!r}")
        dev, colon, port = rest.rpartition(":")
        if not colon:
            raise DemuxError(f"{where}: no port in {text!r}")
        dev = dev[1:] if dev.startswith("%") else None
        return addr, dev or None, port
    hostpart, sep, port = text.rpartition(":")
    if not sep:
        raise DemuxError(f"{where}: no port in {text!r}")
    addr, _, dev = hostpart.partition("%")
    return addr, dev or None, port


def _endpoint(text: str, proto: str, old_star: bool, where: str) -> tuple[Endpoint, str | None, bool]:
    """(endpoint, device, written as ``*``)."""
    addr, dev, port = _split_addr(text, where)
    star = addr == "*"
    if star:
        addr = "0.0.0.0" if old_star else "::"
    try:
        family, norm = normalize_address(addr)
    except ValueError:
        raise DemuxError(f"{where}: {addr!r} is not an address (save ss output with -n, "
                         "without -r)") from None
    return Endpoint(family, norm, _port(port, proto, where)), dev, star


def parse_ss(text: str, name: str = "<ss>") -> tuple[list[Row], list[str]]:
    """Rows of TCP and UDP sockets in saved ss output, and notes on what was skipped."""
    lines = text.splitlines()
    # Old ss (before dual-stack ``*``) wrote the IPv4 wildcard as ``*`` and IPv6 unbracketed.
    old_star = any(re.search(r"\s:::\d+|\s:::[a-z]", " " + ln) for ln in lines)
    netid_col = None
    skipped: dict[str, int] = {}
    raw: list[tuple[int, list[str], str]] = []
    for i, line in enumerate(lines, 1):
        where = f"{name}:{i}"
        words = line.split()
        if not words or line.startswith(_NOISE):
            continue
        if words[0] in ("Netid", "State"):
            netid_col = words[0] == "Netid"
            continue
        has_netid = words[0] in NETIDS if netid_col is None else netid_col
        proto = words[0] if has_netid else None
        rest = words[1:] if has_netid else words
        if has_netid and proto not in NETIDS:
            raise DemuxError(f"{where}: unknown Netid {proto!r}")
        state = rest[0] if rest and rest[0] in STATES else None
        if state is not None:
            rest = rest[1:]
        if len(rest) < 4 or not rest[0].isdigit() or not rest[1].isdigit():
            raise DemuxError(f"{where}: not an ss socket line (expected [Netid] [State] Recv-Q "
                             f"Send-Q Local Peer [Process]): {line.strip()[:80]!r}")
        if proto is not None and proto not in ("tcp", "udp"):
            skipped[proto] = skipped.get(proto, 0) + 1
            continue
        raw.append((i, [proto, state] + rest, line))

    # Without a Netid column, the states tell the protocol of the whole listing.
    states = {r[1][1] for r in raw}
    default_proto = "udp" if "UNCONN" in states and "LISTEN" not in states else "tcp"
    rows: list[Row] = []
    for i, (proto, state, recvq, sendq, local, peer, *extra), line in raw:
        where = f"{name}:{i}"
        proto = proto or default_proto
        lep, dev, star = _endpoint(local, proto, old_star, where)
        pep = None
        if not peer.endswith(":*"):
            pep = _endpoint(peer, proto, old_star, where)[0]
        if state is None:
            state = ("LISTEN" if proto == "tcp" else "UNCONN") if pep is None else "ESTAB"
        if proto == "tcp" and state == "ESTAB" and pep is not None:
            pass            # a client connection, unless a listener owns its port (below)
        elif proto == "tcp" and state != "LISTEN" or proto == "udp" and state not in ("UNCONN", "ESTAB"):
            key = f"{proto} {state}"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        tail = " ".join(extra)
        users = [(n.replace('\\"', '"'), int(p), int(f)) for n, p, f in _USER.findall(tail)]
        if tail.startswith("users:") and not users:
            raise DemuxError(f"{where}: cannot read the process column {extra[0][:60]!r}")
        ex = dict(_EXTRA.findall(tail))
        row = Row(proto=proto, state=state, local=lep, peer=pep, device=dev, users=users, where=where)
        if state == "LISTEN":
            row.backlog = int(sendq)
        if "uid" in ex:
            row.uid = int(ex["uid"])
        elif "ino" in ex:
            row.uid = 0          # with -e, ss leaves uid out when it is 0
        if "ino" in ex:
            row.inode = int(ex["ino"])
        if "v6only" in ex:
            row.v6only = ex["v6only"] == "1"
        elif lep.family == 6 and star:
            row.v6only = False   # ``*`` is the dual-stack wildcard
        elif lep.family == 6 and lep.addr == "::" and not old_star and state in ("LISTEN", "UNCONN"):
            row.v6only = True    # current ss writes ``[::]`` only for an IPV6_V6ONLY socket
        rows.append(row)
    # An established TCP socket on a listener's port was accepted from it: the listener
    # stands for it. The others are client connections, written as connect() calls.
    listening = [r for r in rows if r.state == "LISTEN"]
    kept = []
    for r in rows:
        if r.proto == "tcp" and r.state == "ESTAB":
            if not r.users or any(l.local.port == r.local.port and overlap(l, r) for l in listening):
                key = "tcp ESTAB" + ("" if r.users else " (no process)")
                skipped[key] = skipped.get(key, 0) + 1
                continue
        kept.append(r)
    rows = kept
    _settle_v6only(rows)
    why = {"tcp ESTAB": "accepted connections: their listener stands for them"}
    notes = [f"skipped {n} {what} line{'s' if n != 1 else ''} ({why.get(what, 'not a socket a scenario holds')})"
             for what, n in sorted(skipped.items())]
    if old_star:
        notes.append("old ss style: `*` read as 0.0.0.0, `:::PORT` as [::]")
    return rows, notes


def _settle_v6only(rows: list[Row]) -> None:
    """A ``[::]`` socket beside an IPv4 wildcard on the same port must be v6only: the two
    could not both be bound otherwise (and current ss writes a dual-stack one as ``*``)."""
    v4wild = {(r.proto, r.local.port) for r in rows if r.local.family == 4 and r.local.addr == "0.0.0.0"}
    for r in rows:
        if r.v6only is None and r.local.family == 6 and r.local.addr == "::" \
                and (r.proto, r.local.port) in v4wild:
            r.v6only = True


# ---- building a scenario ---------------------------------------------------------------

def _v4_view(ep: Endpoint, v6only: bool | None) -> str | None:
    """The IPv4 address a bound endpoint answers for (``0.0.0.0`` for a wildcard), or None."""
    if ep.family == 4:
        return ep.addr
    if ep.addr == "::":
        return None if v6only else "0.0.0.0"
    if ep.addr.startswith("::ffff:") and "." in ep.addr:
        return ep.addr[7:]
    return None


def overlap(a: Row, b: Row, default_v6only: bool = False) -> bool:
    """Whether two sockets on one port claim a common local address
    (``inet_rcv_saddr_equal``), so that only SO_REUSEPORT (or, for UDP, SO_REUSEADDR)
    lets both be bound."""
    va = a.v6only if a.v6only is not None else default_v6only
    vb = b.v6only if b.v6only is not None else default_v6only
    if a.device and b.device and a.device != b.device:
        return False
    a4, b4 = _v4_view(a.local, va), _v4_view(b.local, vb)
    if a4 is not None and b4 is not None:
        return a4 == b4 or "0.0.0.0" in (a4, b4)
    if a.local.family == 6 and b.local.family == 6:
        if "::" in (a.local.addr, b.local.addr):
            return True
        return a.local.addr == b.local.addr
    return False


def _order(keys_by_proto: list[list[object]], first_seen: dict[object, int]) -> list[object]:
    """Processes in an order that keeps each protocol's rows in listing order: the
    scenario creates sockets process by process, and ss lists them in creation order."""
    after: dict[object, set] = {k: set() for k in first_seen}
    for seq in keys_by_proto:
        for x, y in zip(seq, seq[1:]):
            if x != y:
                after[y].add(x)
    out: list[object] = []
    done: set = set()
    pending = sorted(first_seen, key=first_seen.get)
    while pending:
        ready = [k for k in pending if after[k] <= done] or pending[:1]   # a cycle: listing order
        k = ready[0]
        out.append(k)
        done.add(k)
        pending.remove(k)
    return out


def build(rows: list[Row], source: str, notes: list[str] | None = None,
          sysctl: dict | None = None, host: HostSpec | None = None,
          reuse_known: bool = False, title: str | None = None) -> tuple[Scenario, str]:
    """The scenario of a listing's sockets and the header comment on what was assumed.

    ``reuse_known``: the rows carry SO_REUSEADDR/SO_REUSEPORT as read from the sockets,
    so nothing is assumed about them.
    """
    notes = list(notes or [])
    sc = Scenario(path=source)
    if sysctl:
        sc.sysctl.update(sysctl)
    default_v6only = bool(sc.sysctl.get("net.ipv6.bindv6only", 0))
    unpriv = int(sc.sysctl.get("net.ipv4.ip_unprivileged_port_start",
                               SYSCTL_DEFAULTS["net.ipv4.ip_unprivileged_port_start"]))
    comments: dict[int, list[str]] = {id(r): [] for r in rows}
    uids_unknown = any(r.uid is None for r in rows)

    # SO_REUSEPORT where the listing cannot say and the kernel would need it.
    groups: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.proto, r.local.port), []).append(r)
    for group in groups.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a is b or not overlap(a, b, default_v6only):
                    continue
                for r in (a, b):
                    if r.reuseport is None and not (r.proto == "udp" and r.reuseaddr):
                        r.reuseport = True
                        comments[id(r)].append(
                            f"shares {r.proto} port {r.local.port} with another socket: SO_REUSEPORT "
                            "assumed (the listing does not show it)")
    # A socket held by several processes (an inherited descriptor) becomes one copy per
    # process, which the kernel allows only as a SO_REUSEPORT group.
    for r in rows:
        if len({pid for _n, pid, _f in r.users}) > 1:
            holders = ", ".join(f"{n} pid {p} fd {f}" for n, p, f in r.users)
            shared = f"one socket held by {holders}"
            if r.reuseport:
                shared += " (SO_REUSEPORT is set): one copy per process"
            elif reuse_known:
                shared += ("; SO_REUSEPORT is off, so an inherited descriptor: written as one "
                           "SO_REUSEPORT copy per process, the nearest a scenario can say")
            else:
                shared += ("; an inherited descriptor or SO_REUSEPORT (ss cannot say): written as one "
                           "SO_REUSEPORT copy per process")
            r.reuseport = True
            comments[id(r)].append(shared)

    procs: dict[object, ProcessSpec] = {}
    first_seen: dict[object, int] = {}
    by_proto: dict[str, list[object]] = {"tcp": [], "udp": []}
    used_pids = {pid for r in rows for _n, pid, _f in r.users}
    next_pid = 1000
    for idx, r in enumerate(rows):
        owners = r.users or [None]
        for u in owners:
            if u is None:
                while next_pid in used_pids:
                    next_pid += 1
                key, name, pid, fd = ("anon", idx), "unknown", next_pid, None
                used_pids.add(next_pid)
                comments[id(r)].append("no process shown for this socket (ss without -p, or not root)")
            else:
                name, pid, fd = u
                key = pid
            if key not in procs:
                procs[key] = ProcessSpec(name=name, pid=pid, uid=r.uid or 0)
                first_seen[key] = idx
            p = procs[key]
            by_proto[r.proto].append(key)
            spec = SocketSpec(proto=r.proto, bind=r.local, listen=r.state == "LISTEN",
                              connect=r.peer, owner_shown=u is not None,
                              device=r.device, fd=fd,
                              reuseaddr=bool(r.reuseaddr), reuseport=bool(r.reuseport),
                              v6only=r.v6only if r.local.family == 6 else None)
            if r.backlog is not None:
                spec.backlog = r.backlog
            if r.uid is not None and r.uid != p.uid:
                comments[id(r)].append(f"socket uid {r.uid} differs from the process's first socket "
                                       f"(uid {p.uid})")
            c = comments[id(r)]
            spec.comment = "; ".join(dict.fromkeys(c)) or None
            p.sockets.append(spec)

    for key, p in procs.items():
        low = [s for s in p.sockets if s.bind is not None and 0 < s.bind.port < unpriv]
        if p.uid and low:
            p.comment = (f"uid {p.uid} holds port {low[0].bind.port}, below ip_unprivileged_port_start "
                         f"({unpriv}): it had CAP_NET_BIND_SERVICE or inherited the socket; written as "
                         "uid 0 so the emulated bind succeeds")
            p.uid = 0
    sc.processes = [procs[k] for k in _order(list(by_proto.values()), first_seen)]

    if host is None:
        host = HostSpec()
        seen = []
        for r in rows:
            a = r.local.addr
            if r.local.family == 6 and a.startswith("::ffff:") and "." in a:
                a = a[7:]
            if a in ("0.0.0.0", "::", "::1") or a.startswith("127."):
                continue
            if a not in seen:
                seen.append(a)
        host.addresses = sorted(seen, key=lambda a: ":" in a)
        if seen:
            notes.append("host addresses: only those sockets are bound to (the listing does not show "
                         "the others)")
        else:
            notes.append("host addresses: none in the listing (every socket is bound to a wildcard "
                         "or loopback address); replay, ss and explain take them from the capture")
    sc.host = host
    if uids_unknown:
        notes.append("uids: not in the listing (ss without -e): uid 0 assumed")
    if not reuse_known:
        notes.append("SO_REUSEADDR/SO_REUSEPORT are not in ss output: assumed only where sockets "
                     "share a port (see the comments)")
    header = "\n".join([title or f"Imported by `demux import-ss` from {source}."] + notes)
    return sc, header


def import_ss(text: str, name: str = "<ss>") -> tuple[Scenario, str]:
    """The scenario of saved ss output, and its header comment."""
    rows, notes = parse_ss(text, name)
    if not rows and not re.search(r"^\s*(Netid|State)\s+Recv-Q", text, re.M):
        raise DemuxError(f"{name}: no ss output in it (neither a header line nor a socket line)")
    return build(rows, name, notes)
