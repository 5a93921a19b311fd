"""The TUN interface: open or create it, bring it up, address it, route the host into it.

One of the two modules of ``demux live`` that touch the OS (with ``dispatcher``).
The device is attached with the TUNSETIFF ioctl (IFF_TUN | IFF_NO_PI: each read is one
raw IP packet, each write sends one); addresses and routes are set with iproute2's
``ip``, so no netlink library is needed. A device that did not exist before is created
non-persistent, so the kernel removes it (with its addresses and routes) when the
descriptor closes; on a device that existed, ``close`` removes only the addresses and
routes demux added.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import struct
import subprocess

from demux.errors import DemuxError

TUNSETIFF = 0x400454CA          # _IOW('T', 202, int), include/uapi/linux/if_tun.h
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise DemuxError("`ip` (iproute2) is not installed") from None
    except subprocess.TimeoutExpired:
        raise DemuxError(f"`ip {' '.join(args)}` did not finish in 10 s") from None
    if check and r.returncode != 0:
        raise DemuxError(f"`ip {' '.join(args)}` failed: {r.stderr.strip() or r.returncode}")
    return r


class Tun:
    """An attached TUN device. ``fileno`` is for select; ``read``/``write`` move packets."""

    def __init__(self, name: str, addresses: list[str] | None = None, routes: list[str] | None = None):
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name.strip() != name:
            raise DemuxError(f"--tun {name!r}: not a valid interface name (at most 15 characters)")
        self.name = name
        self.fd = -1
        self.created = not os.path.exists(f"/sys/class/net/{name}")
        self._added: list[tuple[str, ...]] = []     # `ip` commands that undo what we did
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise DemuxError(f"/dev/net/tun: {err.strerror} (demux live needs root or CAP_NET_ADMIN)") from None
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        except OSError as err:
            os.close(self.fd)
            self.fd = -1
            why = "in use by another process, or not a TUN device" if err.errno in (16, 22) else err.strerror
            raise DemuxError(f"--tun {name}: cannot attach: {why}") from None
        os.set_blocking(self.fd, False)
        try:
            self._configure(addresses or [], routes or [])
        except DemuxError:
            self.close()
            raise

    def _configure(self, addresses: list[str], routes: list[str]) -> None:
        _ip("link", "set", "dev", self.name, "up")
        for cidr in addresses:
            try:
                iface = ipaddress.ip_interface(cidr)
            except ValueError:
                raise DemuxError(f"--address {cidr!r}: not an address with a prefix length") from None
            fam = "-4" if iface.version == 4 else "-6"
            extra = ("nodad",) if iface.version == 6 else ()
            r = _ip(fam, "addr", "add", str(iface), "dev", self.name, *extra, check=False)
            if r.returncode == 0:
                self._added.append((fam, "addr", "del", str(iface), "dev", self.name))
            elif "exists" not in r.stderr:
                raise DemuxError(f"--address {cidr}: {r.stderr.strip()}")
        for addr in routes:
            a = ipaddress.ip_address(addr)
            if a.is_loopback:
                continue
            prefix = f"{a}/{a.max_prefixlen}"
            fam = "-4" if a.version == 4 else "-6"
            _ip(fam, "route", "replace", prefix, "dev", self.name)
            self._added.append((fam, "route", "del", prefix, "dev", self.name))

    def mtu(self) -> int:
        try:
            with open(f"/sys/class/net/{self.name}/mtu") as f:
                return int(f.read())
        except (OSError, ValueError):
            return 1500

    def tx_dropped(self) -> int:
        """Packets the kernel could not queue to us (its transmit side is our input)."""
        try:
            with open(f"/sys/class/net/{self.name}/statistics/tx_dropped") as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes | None:
        """One packet, or None when none is waiting."""
        try:
            return os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return None

    def write(self, packet: bytes) -> bool:
        try:
            os.write(self.fd, packet)
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            # EINVAL/EIO for a packet the kernel refuses: count it, keep going.
            return False

    def close(self) -> None:
        if self.fd < 0:
            return
        if not self.created:
            for cmd in reversed(self._added):
                _ip(*cmd, check=False)
        os.close(self.fd)      # a device we created is not persistent: the kernel removes it
        self.fd = -1


class PairDevice:
    """A datagram socketpair standing in for a TUN (tests, benchmarks): each message is
    one raw IP packet. ``peer`` is the other end, where a test plays the network."""

    def __init__(self, mtu: int = 1500):
        import socket
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.sock, self.peer):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        self.sock.setblocking(False)
        self._mtu = mtu

    def mtu(self) -> int:
        return self._mtu

    def tx_dropped(self) -> int:
        return 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> bytes | None:
        try:
            return self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return None

    def write(self, packet: bytes) -> bool:
        # A TUN write never waits; a socketpair can be full (net.unix.max_dgram_qlen):
        # wait a little for the test's reader rather than lose the packet.
        import select
        for _ in range(2):
            try:
                self.sock.send(packet)
                return True
            except (BlockingIOError, InterruptedError):
                select.select([], [self.sock], [], 1.0)
        return False

    def close(self) -> None:
        self.sock.close()
        self.peer.close()
