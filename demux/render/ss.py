"""The emulated socket table in iproute2 ``ss`` columns and spelling (SPEC §5).

``ss`` prints ``Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process``;
Netid only when more than one protocol is shown. A listener's Recv-Q is its accept
queue and Send-Q its backlog; ``users:(("name",pid=N,fd=M))`` with ``-p``.
"""

from __future__ import annotations

from demux.kernel.sock import ANY6, unpack


def _addr(addr: bytes, port: int | str, device: str | None, numeric: bool, proto: str,
          dual: bool = False) -> str:
    if addr == ANY6:
        # iproute2 prints a dual-stack wildcard as "*", a v6only one as "[::]".
        host = "*" if dual else "[::]"
    elif len(addr) == 16:
        host = f"[{unpack(addr)}]"
    else:
        host = unpack(addr)
    if device:
        host += f"%{device}"
    if not numeric and isinstance(port, int) and port:
        from demux.services import service
        port = service(port, proto) or port
    return f"{host}:{port}"


def rows(kernel, tcp=True, udp=True, listening=False, all_=False, numeric=True, processes=False,
         extended=False):
    """Rows of ss's columns, as lists of strings, in ss's order (TCP before UDP)."""
    out = []
    for proto, state, laddr, lport, peer, proc, fd, obj in kernel.rows():
        if proto == "tcp" and not tcp or proto == "udp" and not udp:
            continue
        is_listen = state in ("LISTEN", "UNCONN")
        if not all_ and (is_listen != listening):
            continue
        device = getattr(obj, "device", None) if hasattr(obj, "device") else None
        if hasattr(obj, "listener") and obj.listener is not None:
            device = obj.listener.device
        recvq, sendq = 0, 0
        if state == "LISTEN":
            recvq, sendq = obj.queued, obj.backlog
        listener = getattr(obj, "listener", None)
        if listener is not None and listener.family == 6 and len(laddr) == 4:
            # An IPv4 connection accepted by an AF_INET6 socket is v4-mapped in ss.
            laddr = b"\x00" * 10 + b"\xff\xff" + laddr
            host, _, port = peer.rpartition(":")
            peer = f"[::ffff:{host}]:{port}"
        dual = laddr == ANY6 and not getattr(obj, "v6only", True)
        local = _addr(laddr, lport, device, numeric, proto, dual)
        if peer is None:
            wild = "*" if dual else "[::]" if len(laddr) == 16 else "0.0.0.0"
            peer = f"{wild}:*"
        elif not numeric:
            host, _, port = peer.rpartition(":")
            from demux.services import service
            peer = f"{host}:{service(int(port), proto) or port}"
        row = [proto, state, str(recvq), str(sendq), local, peer]
        extra = []
        if processes and proc is not None and fd is not None:
            extra.append(f'users:(("{proc.name}",pid={proc.pid},fd={fd}))')
        if extended and proc is not None and proc.uid:
            extra.append(f"uid:{proc.uid}")
        row.append(" ".join(extra))
        out.append(row)
    out.sort(key=lambda r: 0 if r[0] == "tcp" else 1)
    return out


def render(kernel, tcp=False, udp=False, listening=False, all_=False, numeric=False,
           processes=False, extended=False) -> str:
    if not tcp and not udp:
        tcp = udp = True
    table = rows(kernel, tcp, udp, listening, all_, numeric, processes, extended)
    show_netid = tcp and udp
    head = (["Netid"] if show_netid else []) + ["State", "Recv-Q", "Send-Q", "Local Address:Port",
                                                "Peer Address:Port", "Process"]
    body = [(r if show_netid else r[1:]) for r in table]
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) if body else len(head[i])
              for i in range(len(head))]
    lines = []
    for r in [head] + body:
        cells = []
        for i, cell in enumerate(r):
            if i == len(r) - 1:
                cells.append(cell)
            elif head[i] in ("Recv-Q", "Send-Q"):
                cells.append(cell.ljust(widths[i]))
            elif head[i] == "Local Address:Port":
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell.ljust(widths[i]))
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
