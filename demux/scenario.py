"""Scenario files (SPEC §1): one host, its addresses, sysctls and processes' socket calls.

``load``/``loads`` read and validate TOML into plain dataclasses; ``dumps`` writes a
scenario back (for ``infer``, ``snapshot`` and ``import-ss``), with an optional comment
per socket giving its evidence. A file that cannot be read raises ``ScenarioError``
with one line naming the file, the place and the problem. Whether the kernel accepts
a socket call is not decided here: that is an outcome (``demux.kernel``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

import netaddr

from demux.errors import ScenarioError

PID_MAX_LIMIT = 4 * 1024 * 1024     # include/linux/threads.h on 64-bit: the largest pid_max

# Linux defaults of the sysctls a scenario may set.
SYSCTL_DEFAULTS: dict[str, object] = {
    "net.ipv4.ip_local_port_range": "32768 60999",
    "net.ipv4.ip_local_reserved_ports": "",
    "net.ipv4.ip_unprivileged_port_start": 1024,
    "net.ipv6.bindv6only": 0,
    "net.ipv4.tcp_tw_reuse": 2,
    "net.core.somaxconn": 4096,
    "net.ipv4.ip_nonlocal_bind": 0,
    "net.ipv6.ip_nonlocal_bind": 0,
    "net.ipv4.tcp_syncookies": 1,
}

_SOCKET_KEYS = {"proto", "bind", "connect", "listen", "backlog", "reuseaddr", "reuseport",
                "v6only", "device", "fd", "accept", "at", "close_at", "comment"}
_PROCESS_KEYS = {"name", "pid", "uid", "user", "sockets", "comment"}
_HOST_KEYS = {"name", "addresses", "interfaces"}
_TOP_KEYS = {"host", "sysctl", "process"}

# Used when /etc/passwd does not know a `user =` name; uids as on Debian.
_WELL_KNOWN_USERS = {"root": 0, "daemon": 1, "bin": 2, "sys": 3, "www-data": 33,
                     "nobody": 65534, "systemd-resolve": 101, "postgres": 104,
                     "mysql": 105, "redis": 106}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address and port as written in a scenario; ``addr`` is normalised text."""

    family: int          # 4 or 6
    addr: str            # "0.0.0.0", "10.0.0.1", "::", "2001:db8::1", "::ffff:10.0.0.1"
    port: int

    def __str__(self) -> str:
        return f"[{self.addr}]:{self.port}" if self.family == 6 else f"{self.addr}:{self.port}"

    @property
    def wildcard(self) -> bool:
        return self.addr in ("0.0.0.0", "::")


@dataclass(slots=True)
class SocketSpec:
    proto: str
    bind: Endpoint | None = None
    connect: Endpoint | None = None
    listen: bool = False
    backlog: int = 4096
    reuseaddr: bool = False
    reuseport: bool = False
    v6only: bool | None = None       # None: net.ipv6.bindv6only decides
    device: str | None = None
    fd: int | None = None            # None: the process's next free descriptor
    accept: bool = True
    at: float | None = None
    close_at: float | None = None
    comment: str | None = None
    # False for a socket read from a table that showed no owner (snapshot without root,
    # ss without -p): it gets a stand-in process, which `demux ss -p` does not print.
    # Not part of the file format.
    owner_shown: bool = True

    @property
    def family(self) -> int:
        ep = self.bind or self.connect
        return ep.family if ep else 4


@dataclass(slots=True)
class ProcessSpec:
    name: str
    pid: int
    uid: int = 0
    sockets: list[SocketSpec] = field(default_factory=list)
    comment: str | None = None


@dataclass(slots=True)
class HostSpec:
    name: str | None = None
    addresses: list[str] = field(default_factory=list)
    prefixes: dict[str, int] = field(default_factory=dict)   # "10.0.0.1/24" in the file
    interfaces: dict[str, list[str]] = field(default_factory=dict)


@dataclass(slots=True)
class Scenario:
    host: HostSpec = field(default_factory=HostSpec)
    sysctl: dict[str, object] = field(default_factory=lambda: dict(SYSCTL_DEFAULTS))
    processes: list[ProcessSpec] = field(default_factory=list)
    path: str = "<scenario>"

    def port_range(self) -> tuple[int, int]:
        lo, hi = str(self.sysctl["net.ipv4.ip_local_port_range"]).split()
        return int(lo), int(hi)

    def reserved_ports(self) -> set[int]:
        return parse_port_list(str(self.sysctl["net.ipv4.ip_local_reserved_ports"]))


def parse_port_list(text: str) -> set[int]:
    """``ip_local_reserved_ports`` syntax: ``"8080,9000-9010"``."""
    ports: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if not (0 <= a <= b <= 65535):
            raise ValueError(f"bad port range {part!r}")
        ports.update(range(a, b + 1))
    return ports


def normalize_address(text: str) -> tuple[int, str]:
    """(family, compressed text) of an IP address, or ValueError."""
    try:
        ip = netaddr.IPAddress(text.strip("[]"), flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValueError(f"bad address {text!r}") from None
    if ip.version == 6:
        return 6, ip.format(netaddr.ipv6_compact)
    return 4, str(ip)


def parse_endpoint(text: object) -> Endpoint:
    """``ADDR:PORT`` with IPv6 in brackets, e.g. ``[::]:443``."""
    if not isinstance(text, str):
        raise ValueError(f"expected \"ADDR:PORT\", got {text!r}")
    if text.startswith("["):
        addr, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad endpoint {text!r}: IPv6 is written [ADDR]:PORT")
    else:
        addr, sep, port = text.rpartition(":")
        if not sep or ":" in addr:
            raise ValueError(f"bad endpoint {text!r}: expected ADDR:PORT (IPv6 in brackets)")
    family, norm = normalize_address(addr)
    if not port.isdigit():
        raise ValueError(f"bad port {port!r} in {text!r}")
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} out of range 0..65535 in {text!r}")
    if family == 4 and text.startswith("["):
        raise ValueError(f"bad endpoint {text!r}: brackets are for IPv6")
    return Endpoint(family, norm, p)


def _lookup_user(name: str) -> int:
    try:
        import pwd
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ImportError):
        if name in _WELL_KNOWN_USERS:
            return _WELL_KNOWN_USERS[name]
        raise ValueError(f"unknown user {name!r} (give uid = N instead)") from None


def _expect(value: object, types: type | tuple, where: str, what: str) -> object:
    if isinstance(value, bool) and types in (int, float, (int, float)):
        raise ScenarioError(f"{where}: {what} must be a number, not {value!r}")
    if not isinstance(value, types):
        raise ScenarioError(f"{where}: {what} has the wrong type ({type(value).__name__})")
    return value


def loads(text: str, path: str = "<scenario>") -> Scenario:
    """Parse and validate scenario TOML text; ``path`` names it in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from None
    for key in doc:
        if key not in _TOP_KEYS:
            raise ScenarioError(f"{path}: unknown key {key!r} (expected host, sysctl, process)")
    sc = Scenario(path=path)

    host = doc.get("host", {})
    _expect(host, dict, f"{path}: [host]", "[host]")
    for key in host:
        if key not in _HOST_KEYS:
            raise ScenarioError(f"{path}: [host]: unknown key {key!r}")
    sc.host.name = host.get("name")
    for i, a in enumerate(_expect(host.get("addresses", []), list, f"{path}: [host]", "addresses")):
        try:
            text = _expect(a, str, f"{path}: [host] addresses[{i}]", "address")
            text, slash, plen = text.partition("/")
            family, norm = normalize_address(text)
            sc.host.addresses.append(norm)
            if slash:
                if not plen.isdigit() or int(plen) > (32 if family == 4 else 128):
                    raise ValueError(f"bad prefix length /{plen}")
                sc.host.prefixes[norm] = int(plen)
        except ValueError as err:
            raise ScenarioError(f"{path}: [host] addresses[{i}]: {err}") from None
    for ifname, addrs in _expect(host.get("interfaces", {}), dict, f"{path}: [host]", "interfaces").items():
        try:
            sc.host.interfaces[ifname] = [normalize_address(a)[1] for a in addrs]
        except (ValueError, TypeError) as err:
            raise ScenarioError(f"{path}: [host] interfaces.{ifname}: {err}") from None

    sysctl = _expect(doc.get("sysctl", {}), dict, f"{path}: [sysctl]", "[sysctl]")
    for key, value in sysctl.items():
        if key not in SYSCTL_DEFAULTS:
            raise ScenarioError(f"{path}: [sysctl]: unknown sysctl {key!r} "
                                f"(known: {', '.join(SYSCTL_DEFAULTS)})")
        sc.sysctl[key] = value
    try:
        lo, hi = sc.port_range()
        if not (1 <= lo <= hi <= 65535):
            raise ValueError
    except ValueError:
        raise ScenarioError(f"{path}: [sysctl] net.ipv4.ip_local_port_range: expected \"LOW HIGH\" "
                            f"within 1..65535, got {sc.sysctl['net.ipv4.ip_local_port_range']!r}") from None
    try:
        sc.reserved_ports()
    except ValueError as err:
        raise ScenarioError(f"{path}: [sysctl] net.ipv4.ip_local_reserved_ports: {err}") from None
    for key in ("net.ipv4.ip_unprivileged_port_start", "net.ipv6.bindv6only", "net.ipv4.tcp_tw_reuse",
                "net.core.somaxconn", "net.ipv4.ip_nonlocal_bind", "net.ipv6.ip_nonlocal_bind",
                "net.ipv4.tcp_syncookies"):
        v = sc.sysctl[key]
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ScenarioError(f"{path}: [sysctl] {key}: expected a non-negative integer, got {v!r}")
        # The kernel refuses these writes (EINVAL): sysctl_net_ipv4.c's bounds.
        top = {"net.ipv4.ip_unprivileged_port_start": 65535, "net.ipv4.tcp_tw_reuse": 2}.get(key)
        if top is not None and v > top:
            raise ScenarioError(f"{path}: [sysctl] {key}: at most {top}, got {v}")
        sc.sysctl[key] = v

    procs = _expect(doc.get("process", []), list, f"{path}", "process")
    next_pid = 1000
    used_pids = {p.get("pid") for p in procs if isinstance(p, dict)}
    named_pids: dict[int, str] = {}
    for pi, p in enumerate(procs):
        where = f"{path}: process[{pi}]"
        _expect(p, dict, where, "process")
        for key in p:
            if key not in _PROCESS_KEYS:
                raise ScenarioError(f"{where}: unknown key {key!r}")
        name = p.get("name")
        if not isinstance(name, str) or not name:
            raise ScenarioError(f"{where}: name is missing")
        where = f"{path}: process {name!r}"
        if "pid" in p:
            pid = _expect(p["pid"], int, where, "pid")
            if not 0 < pid <= PID_MAX_LIMIT:
                raise ScenarioError(f"{where}: pid must be within 1..{PID_MAX_LIMIT}, got {pid}")
            if pid in named_pids:
                raise ScenarioError(f"{where}: pid {pid} is already process {named_pids[pid]!r}")
            named_pids[pid] = name
        else:
            while next_pid in used_pids:
                next_pid += 1
            pid = next_pid
            used_pids.add(pid)
        uid = p.get("uid")
        if uid is not None:
            _expect(uid, int, where, "uid")
            if uid < 0:
                raise ScenarioError(f"{where}: uid must be >= 0, got {uid}")
        if "user" in p:
            try:
                user_uid = _lookup_user(_expect(p["user"], str, where, "user"))
            except ValueError as err:
                raise ScenarioError(f"{where}: {err}") from None
            if uid is not None and uid != user_uid:
                raise ScenarioError(f"{where}: user {p['user']!r} is uid {user_uid}, not {uid}")
            uid = user_uid
        proc = ProcessSpec(name=name, pid=pid, uid=uid or 0, comment=p.get("comment"))
        for si, s in enumerate(_expect(p.get("sockets", []), list, where, "sockets")):
            proc.sockets.append(_socket(s, f"{where} sockets[{si}]"))
        _fds_distinct(proc.sockets, where)
        sc.processes.append(proc)
    return sc


def _fds_distinct(socks: list[SocketSpec], where: str) -> None:
    """Two sockets of one process open at the same time cannot have the same descriptor."""
    held: list[tuple[int, float, float, int]] = []
    for si, s in enumerate(socks):
        if s.fd is None:
            continue
        start = s.at or 0.0
        end = s.close_at if s.close_at is not None else float("inf")
        for fd, a, b, other in held:
            if fd == s.fd and start < b and a < end:
                raise ScenarioError(f"{where} sockets[{si}]: fd {fd} is also sockets[{other}], open at the "
                                    "same time")
        held.append((s.fd, start, end, si))


def _socket(s: object, where: str) -> SocketSpec:
    _expect(s, dict, where, "socket")
    for key in s:
        if key not in _SOCKET_KEYS:
            raise ScenarioError(f"{where}: unknown key {key!r}")
    proto = s.get("proto")
    if proto not in ("tcp", "udp"):
        raise ScenarioError(f"{where}: proto must be \"tcp\" or \"udp\", got {proto!r}")
    spec = SocketSpec(proto=proto)
    for key in ("bind", "connect"):
        if key in s:
            try:
                setattr(spec, key, parse_endpoint(s[key]))
            except ValueError as err:
                raise ScenarioError(f"{where}: {key}: {err}") from None
    if spec.bind is None and spec.connect is None:
        raise ScenarioError(f"{where}: needs bind or connect")
    if spec.connect is not None and spec.connect.port == 0:
        raise ScenarioError(f"{where}: connect: port 0 is not a destination")
    if spec.bind and spec.connect and spec.bind.family != spec.connect.family:
        # An AF_INET6 socket may connect to a v4-mapped address; plain mixing is an error.
        raise ScenarioError(f"{where}: bind and connect are of different address families")
    for key in ("reuseaddr", "reuseport", "v6only", "accept", "listen"):
        if key in s:
            setattr(spec, key, _expect(s[key], bool, where, key))
    if "listen" not in s:
        spec.listen = proto == "tcp" and spec.connect is None
    elif spec.listen and proto == "udp":
        raise ScenarioError(f"{where}: listen is for TCP sockets only")
    elif spec.listen and spec.connect is not None:
        raise ScenarioError(f"{where}: a socket cannot both listen and connect")
    if "backlog" in s:
        spec.backlog = _expect(s["backlog"], int, where, "backlog")
    if "device" in s:
        spec.device = _expect(s["device"], str, where, "device")
    if "fd" in s:
        spec.fd = _expect(s["fd"], int, where, "fd")
        if spec.fd < 0:
            raise ScenarioError(f"{where}: fd must be >= 0")
    for key in ("at", "close_at"):
        if key in s:
            v = _expect(s[key], (int, float), where, key)
            if not 0 <= v < float("inf"):          # TOML has nan and inf
                raise ScenarioError(f"{where}: {key} must be a finite number of seconds >= 0, got {v}")
            setattr(spec, key, float(v))
    if spec.close_at is not None and spec.close_at < (spec.at or 0.0):
        raise ScenarioError(f"{where}: close_at ({spec.close_at:g} s) is before at ({spec.at:g} s)")
    if "comment" in s:
        spec.comment = _expect(s["comment"], str, where, "comment")
    return spec


def load(path: str) -> Scenario:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ScenarioError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not UTF-8 text") from None
    return loads(text, path)


# ---- writing -------------------------------------------------------------------------

def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _socket_line(s: SocketSpec) -> str:
    parts = [f"proto = {_toml_str(s.proto)}"]
    if s.bind is not None:
        parts.append(f"bind = {_toml_str(str(s.bind))}")
    if s.connect is not None:
        parts.append(f"connect = {_toml_str(str(s.connect))}")
    if s.proto == "tcp" and s.connect is None and not s.listen:
        parts.append("listen = false")
    if s.listen and s.backlog != 4096:
        parts.append(f"backlog = {s.backlog}")
    for key in ("reuseaddr", "reuseport"):
        if getattr(s, key):
            parts.append(f"{key} = true")
    if s.v6only is not None and s.family == 6:
        parts.append(f"v6only = {'true' if s.v6only else 'false'}")
    if s.device:
        parts.append(f"device = {_toml_str(s.device)}")
    if s.fd is not None:
        parts.append(f"fd = {s.fd}")
    if not s.accept:
        parts.append("accept = false")
    for key in ("at", "close_at"):
        v = getattr(s, key)
        if v is not None:
            parts.append(f"{key} = {v!r}")
    return "{ " + ", ".join(parts) + " }"


def dumps(sc: Scenario, header: str | None = None) -> str:
    """TOML text of a scenario; socket ``comment``s become ``#`` comments above them."""
    out: list[str] = []
    if header:
        out += [f"# {line}" if line else "#" for line in header.splitlines()] + [""]
    out.append("[host]")
    if sc.host.name:
        out.append(f"name = {_toml_str(sc.host.name)}")
    out.append("addresses = [" + ", ".join(
        _toml_str(a + (f"/{sc.host.prefixes[a]}" if a in sc.host.prefixes else "")) for a in sc.host.addresses) + "]")
    if sc.host.interfaces:
        items = ", ".join(f"{k} = [" + ", ".join(_toml_str(a) for a in v) + "]"
                          for k, v in sc.host.interfaces.items())
        out.append(f"interfaces = {{ {items} }}")
    changed = {k: v for k, v in sc.sysctl.items() if SYSCTL_DEFAULTS.get(k) != v}
    if changed:
        out += ["", "[sysctl]"]
        for k, v in changed.items():
            out.append(f"{_toml_str(k)} = {_toml_str(v) if isinstance(v, str) else v}")
    for p in sc.processes:
        out += ["", "[[process]]"]
        if p.comment:
            out += [f"# {line}" for line in p.comment.splitlines()]
        out.append(f"name = {_toml_str(p.name)}")
        out.append(f"pid = {p.pid}")
        if p.uid:
            out.append(f"uid = {p.uid}")
        out.append("sockets = [")
        for s in p.sockets:
            if s.comment:
                out += [f"  # {line}" for line in s.comment.splitlines()]
            out.append(f"  {_socket_line(s)},")
        out.append("]")
    return "\n".join(out) + "\n"
