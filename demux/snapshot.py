"""The scenario of the machine demux runs on, as ``ss -tulnp`` sees it (SPEC §7).

Where each fact comes from, from the most to the least standard source:

- sockets: ``/proc/net/{tcp,tcp6,udp,udp6}`` (TCP LISTEN, UDP unconnected and connected:
  local and peer address, socket uid, inode), in the network namespace of the caller;
- owners: the ``socket:[INODE]`` links of ``/proc/PID/fd/N`` give pid and fd, and
  ``/proc/PID/comm`` the process name (other users' processes need root);
- backlog, IPV6_V6ONLY and the bound device: the kernel's sock_diag netlink interface
  (``inet_diag_msg.idiag_wqueue`` is a listener's backlog, ``idiag_if`` its
  SO_BINDTODEVICE ifindex, the ``INET_DIAG_SKV6ONLY`` attribute its v6only flag), the
  same query ``ss`` makes, spoken here over a plain netlink socket;
- SO_REUSEADDR and SO_REUSEPORT: neither /proc nor sock_diag carries them
  (``INET_DIAG_SOCKOPT`` holds freebind, transparent... but not these), so each
  socket is borrowed from its owner with ``pidfd_getfd(2)`` (Linux 5.6+, needs ptrace
  rights over the owner: root, or the same user) and asked with ``getsockopt``; where
  that is refused they are assumed as ``import-ss`` assumes them, and the header says so;
- addresses and interfaces: ``ip -j addr``, else ``/proc/net/if_inet6`` and
  ``/proc/net/fib_trie``; sysctls from ``/proc/sys``.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import subprocess

from demux.importss import Row, _settle_v6only, build
from demux.scenario import Endpoint, HostSpec, Scenario, normalize_address

_TCP_LISTEN, _TCP_ESTABLISHED, _TCP_CLOSE = 0x0A, 0x01, 0x07

# sock_diag (linux/sock_diag.h, linux/inet_diag.h)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_INET_DIAG_SKV6ONLY = 11
_INET_DIAG_TCLASS = 6
_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI")                     # inet_diag_req_v2 before the sockid
_SOCKID = struct.Struct("!HH16s16s")               # ports and addresses, network order
_SOCKID_TAIL = struct.Struct("=I8s")               # idiag_if (host order), cookie
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")                # expires, rqueue, wqueue, uid, inode
_NLA = struct.Struct("=HH")

_SYS_PIDFD_GETFD = 438                             # same number on every architecture
_SO_BINDTODEVICE = 25

_SYSCTLS = {
    "net.ipv4.ip_local_port_range": "net/ipv4/ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports": "net/ipv4/ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start": "net/ipv4/ip_unprivileged_port_start",
    "net.ipv6.bindv6only": "net/ipv6/bindv6only",
    "net.ipv4.tcp_tw_reuse": "net/ipv4/tcp_tw_reuse",
    "net.core.somaxconn": "net/core/somaxconn",
    "net.ipv4.ip_nonlocal_bind": "net/ipv4/ip_nonlocal_bind",
    "net.ipv6.ip_nonlocal_bind": "net/ipv6/ip_nonlocal_bind",
}


# ---- /proc/net ---------------------------------------------------------------------------

def _hex_addr(text: str) -> bytes:
    """/proc/net address: 32-bit words in host byte order, as the kernel prints them."""
    raw = bytes.fromhex(text)
    if socket.htonl(1) == 1:           # big-endian host: already network order
        return raw
    return b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))


def _endpoint(addr: bytes, port: int) -> Endpoint:
    family, text = normalize_address(socket.inet_ntop(socket.AF_INET6 if len(addr) == 16 else socket.AF_INET, addr))
    return Endpoint(family, text, port)


def read_proc_net(proto: str, family: int, root: str = "/proc") -> list[dict]:
    """Listening TCP and bound UDP sockets of one /proc/net table."""
    path = f"{root}/net/{proto}{'6' if family == 6 else ''}"
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        w = line.split()
        if len(w) < 10:
            continue
        state = int(w[3], 16)
        if proto == "tcp" and state != _TCP_LISTEN:
            continue
        if proto == "udp" and state not in (_TCP_CLOSE, _TCP_ESTABLISHED):
            continue
        la, lp = w[1].split(":")
        ra, rp = w[2].split(":")
        out.append({"proto": proto, "state": state, "local": _hex_addr(la), "lport": int(lp, 16),
                    "remote": _hex_addr(ra), "rport": int(rp, 16), "uid": int(w[7]),
                    "inode": int(w[9])})
    return out


def socket_owners(inodes: set[int], root: str = "/proc") -> tuple[dict[int, list[tuple[str, int, int]]], int]:
    """inode -> [(process name, pid, fd)] from every process's fd links, and the number
    of processes whose descriptors could not be read."""
    owners: dict[int, list[tuple[str, int, int]]] = {}
    hidden = 0
    for entry in os.listdir(root):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fddir = f"{root}/{pid}/fd"
        try:
            fds = os.listdir(fddir)
        except OSError:
            hidden += 1
            continue
        name = None
        for fd in fds:
            try:
                link = os.readlink(f"{fddir}/{fd}")
            except OSError:
                continue
            if not link.startswith("socket:["):
                continue
            ino = int(link[8:-1])
            if ino not in inodes:
                continue
            if name is None:
                try:
                    with open(f"{root}/{pid}/comm") as fh:
                        name = fh.read().strip() or str(pid)
                except OSError:
                    name = str(pid)
            owners.setdefault(ino, []).append((name, pid, int(fd)))
    for v in owners.values():
        v.sort(key=lambda u: (u[1], u[2]))
    return owners, hidden


# ---- sock_diag ---------------------------------------------------------------------------

def sock_diag(proto: str, family: int) -> dict[int, dict]:
    """inode -> {backlog, v6only, ifindex, state} from one sock_diag dump; raises OSError
    where the netlink family is not available."""
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    ipproto = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        body = (_REQ.pack(af, ipproto, 1 << (_INET_DIAG_TCLASS - 1), 0, 0xFFFFFFFF)
                + _SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16) + _SOCKID_TAIL.pack(0, b"\xff" * 8))
        nl.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), _SOCK_DIAG_BY_FAMILY,
                               _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + body)
        out: dict[int, dict] = {}
        while True:
            data = nl.recv(1 << 16)
            if not data:
                return out
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    return out
                if mtype == _NLMSG_DONE:
                    return out
                if mtype == _NLMSG_ERROR:
                    err = struct.unpack_from("=i", data, off + _NLMSGHDR.size)[0]
                    raise OSError(-err, os.strerror(-err) if err else "sock_diag error")
                m = off + _NLMSGHDR.size
                _fam, state, _timer, _retrans = _MSG_HEAD.unpack_from(data, m)
                m += _MSG_HEAD.size + _SOCKID.size
                ifindex, _cookie = _SOCKID_TAIL.unpack_from(data, m)
                m += _SOCKID_TAIL.size
                _exp, _rq, wq, _uid, inode = _MSG_TAIL.unpack_from(data, m)
                info = {"state": state, "ifindex": ifindex, "wqueue": wq, "v6only": None}
                a = m + _MSG_TAIL.size
                end = off + length
                while a + _NLA.size <= end:
                    alen, atype = _NLA.unpack_from(data, a)
                    if alen < _NLA.size:
                        break
                    if atype & 0x3FFF == _INET_DIAG_SKV6ONLY and alen > _NLA.size:
                        info["v6only"] = bool(data[a + _NLA.size])
                    a += (alen + 3) & ~3
                out[inode] = info
                off += (length + 3) & ~3


# ---- SO_REUSEADDR / SO_REUSEPORT through pidfd_getfd -------------------------------------

_libc = None


def _pidfd_getfd(pid: int, fd: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        new = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if new < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return new
    finally:
        os.close(pidfd)


def sockopts(pid: int, fd: int) -> dict:
    """SO_REUSEADDR, SO_REUSEPORT, IPV6_V6ONLY and SO_BINDTODEVICE of a socket another
    process holds; OSError where the kernel will not lend it."""
    new = _pidfd_getfd(pid, fd)
    s = socket.socket(fileno=new)
    try:
        opts = {"reuseaddr": bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)),
                "reuseport": bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))}
        if s.family == socket.AF_INET6:
            opts["v6only"] = bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        dev = s.getsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, 16).split(b"\0", 1)[0]
        opts["device"] = dev.decode() or None
        return opts
    finally:
        s.close()          # closes only our duplicate; the owner's socket lives on


# ---- addresses and sysctls ---------------------------------------------------------------

def interfaces() -> tuple[dict[str, list[str]], str]:
    """{ifname: [addresses]} of this namespace and where it came from."""
    try:
        out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            result: dict[str, list[str]] = {}
            for link in json.loads(out.stdout):
                addrs = [normalize_address(a["local"])[1] for a in link.get("addr_info", [])
                         if a.get("family") in ("inet", "inet6") and "local" in a]
                result[link["ifname"]] = addrs
            return result, "ip -j addr"
    except (OSError, ValueError, subprocess.SubprocessError, KeyError):
        pass
    return _interfaces_from_proc(), "/proc/net/if_inet6 and /proc/net/fib_trie"


def _interfaces_from_proc() -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    try:
        for name in sorted(os.listdir("/sys/class/net")):
            result[name] = []
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as fh:
            for line in fh:
                w = line.split()
                if len(w) >= 6:
                    result.setdefault(w[5], []).append(normalize_address(
                        socket.inet_ntop(socket.AF_INET6, bytes.fromhex(w[0])))[1])
    except OSError:
        pass
    # fib_trie names local IPv4 addresses ("/32 host LOCAL") but not their interface.
    local4: list[str] = []
    try:
        with open("/proc/net/fib_trie") as fh:
            prev = None
            for line in fh:
                w = line.split()
                if len(w) >= 2 and w[0] in ("|--", "+--"):
                    prev = w[1]
                elif "/32 host LOCAL" in line and prev and prev not in local4:
                    local4.append(prev)
    except OSError:
        pass
    # Without interface names, IPv4 addresses other than loopback are put under the
    # first non-loopback interface: right on a one-interface host, a guess otherwise.
    names = [n for n in result if n != "lo"]
    for a in local4:
        key = "lo" if a.startswith("127.") or not names else names[0]
        if not any(a in v for v in result.values()):
            result.setdefault(key, []).append(a)
    return result


def sysctls(root: str = "/proc/sys") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, rel in _SYSCTLS.items():
        try:
            with open(f"{root}/{rel}") as fh:
                text = " ".join(fh.read().split())
        except OSError:
            continue
        out[key] = text if key in ("net.ipv4.ip_local_port_range", "net.ipv4.ip_local_reserved_ports") \
            else int(text)
    return out


# ---- the whole picture -------------------------------------------------------------------

def snapshot() -> tuple[Scenario, str]:
    """The scenario of this machine's network namespace, and a header on its sources."""
    notes: list[str] = []
    raw = [s for proto in ("tcp", "udp") for fam in (4, 6) for s in read_proc_net(proto, fam)]
    # Inodes grow as sockets are created: their order is the nearest to creation order.
    raw.sort(key=lambda s: s["inode"])
    owners, hidden = socket_owners({s["inode"] for s in raw})
    if hidden and os.geteuid() != 0:
        notes.append(f"{hidden} processes' descriptors could not be read (not root): their sockets "
                     "are listed as `unknown`")

    diag: dict[int, dict] = {}
    diag_ok, diag_err = True, None
    for proto in ("tcp", "udp"):
        for fam in (4, 6):
            try:
                diag.update(sock_diag(proto, fam))
            except OSError as err:
                diag_ok = False
                diag_err = err
    if not diag_ok:
        notes.append(f"sock_diag unavailable ({diag_err.strerror or diag_err}): backlogs, devices and "
                     "v6only not read (defaults written)")

    ifaces, addr_source = interfaces()
    index_names: dict[int, str] = {}
    try:
        index_names = {i: n for i, n in socket.if_nameindex()}
    except OSError:
        pass

    rows: list[Row] = []
    lent = refused = 0
    for s in raw:
        listening = s["proto"] == "tcp"
        connected = s["proto"] == "udp" and s["state"] == _TCP_ESTABLISHED
        row = Row(proto=s["proto"], state="LISTEN" if listening else ("ESTAB" if connected else "UNCONN"),
                  local=_endpoint(s["local"], s["lport"]),
                  peer=_endpoint(s["remote"], s["rport"]) if connected else None,
                  uid=s["uid"], inode=s["inode"], users=owners.get(s["inode"], []),
                  where=f"inode {s['inode']}")
        d = diag.get(s["inode"])
        if d is not None:
            if listening:
                row.backlog = d["wqueue"]
            if d["ifindex"]:
                row.device = index_names.get(d["ifindex"], f"if{d['ifindex']}")
            if row.local.family == 6:
                row.v6only = d["v6only"]
        for _name, pid, fd in row.users:
            try:
                opts = sockopts(pid, fd)
            except OSError:
                refused += 1
                continue
            lent += 1
            row.reuseaddr, row.reuseport = opts["reuseaddr"], opts["reuseport"]
            if row.local.family == 6 and "v6only" in opts:
                row.v6only = opts["v6only"]
            row.device = opts["device"] or row.device
            break
        rows.append(row)
    _settle_v6only(rows)
    reuse_known = bool(rows) and all(r.reuseport is not None for r in rows)
    if refused or not reuse_known:
        notes.append("SO_REUSEADDR/SO_REUSEPORT read with pidfd_getfd+getsockopt where the kernel "
                     f"allowed it ({lent} sockets); elsewhere not knowable, assumed only where "
                     "sockets share a port (see the comments)")
    else:
        notes.append("SO_REUSEADDR/SO_REUSEPORT read from each socket (pidfd_getfd + getsockopt)")

    host = HostSpec(name=socket.gethostname() or None)
    for name, addrs in ifaces.items():
        for a in addrs:
            if a != "::1" and not a.startswith("127.") and a not in host.addresses:
                host.addresses.append(a)
    host.addresses.sort(key=lambda a: ":" in a)
    host.interfaces = ifaces
    notes.append(f"addresses and interfaces from {addr_source}; sockets from /proc/net and /proc/*/fd"
                 + (", backlogs, devices and v6only from sock_diag" if diag_ok else ""))
    notes.append("TCP connections and sockets bound but not listening are not part of the table "
                 "(ss -tulnp does not show them either)")
    return build(rows, "this machine", notes, sysctl=sysctls(), host=host, reuse_known=reuse_known,
                 title=f"Snapshot by `demux snapshot` of {host.name or 'this machine'} "
                       "(its current network namespace).")
