"""Handler processes: every scenario process runs as a real OS process.

A handler is a function named after the scenario process in the ``--handlers`` module
(a file path or a dotted module name; ``-`` and ``.`` in a process name read as ``_``;
a function named ``default`` serves processes without their own), called as::

    handler(data: bytes, info: dict) -> bytes | None

once per UDP datagram and once per chunk of TCP data. ``info`` holds ``proto``
("tcp"/"udp"), ``family``, ``src``, ``sport`` (the peer), ``dst``, ``dport`` (the
scenario's socket), ``conn`` (TCP connection id, None for UDP), ``process`` and ``pid``
(the scenario's names for it). The bytes returned go back to the peer; a handler that
sets ``info["close"] = True`` closes the TCP connection after its answer. Without a
module every process echoes.

Each worker is fed through a bounded channel: a pipe with at most ``queue`` segments
outstanding (sent but not yet answered). When it is full the dispatcher drops the
segment and counts it, as the kernel drops a segment for a full receive buffer. A
worker that dies is restarted with fresh pipes; only what was in its own channel is
lost. Workers are forked (multiprocessing 'fork' context) and, when demux runs as root,
drop to the scenario process's uid (its group from /etc/passwd, else gid = uid).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import ipaddress
import multiprocessing
import os
import pickle
import pwd
import signal
import struct
import sys

from demux.errors import DemuxError

_LEN = struct.Struct("!I")
_PR_SET_PDEATHSIG = 1


def echo(data: bytes, info: dict) -> bytes:
    """The handler every process gets without ``--handlers``."""
    return data


def load_handlers(module: str | None, names: list[str]) -> dict[str, object]:
    """Process name -> handler function; a one-line DemuxError when one is missing."""
    if module is None:
        return {n: echo for n in names}
    try:
        if module.endswith(".py") or os.sep in module:
            if not os.path.exists(module):
                raise DemuxError(f"{module}: no such handler module")
            spec = importlib.util.spec_from_file_location("demux_live_handlers", module)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
    except DemuxError:
        raise
    except Exception as err:       # the user's module failed to import: say why, in one line
        raise DemuxError(f"{module}: cannot load handler module: {type(err).__name__}: {err}") from None
    out = {}
    for n in names:
        fn = getattr(mod, n, None) or getattr(mod, n.replace("-", "_").replace(".", "_"), None) \
            or getattr(mod, "default", None)
        if not callable(fn):
            raise DemuxError(f"{module}: no function {n!r} (nor 'default') for scenario process {n!r}")
        out[n] = fn
    return out


def frame(obj) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


def unframe(buf: bytearray) -> list:
    """Complete messages at the front of ``buf`` (which keeps any partial rest)."""
    out, i, n = [], 0, len(buf)
    while n - i >= 4:
        (ln,) = _LEN.unpack_from(buf, i)
        if n - i - 4 < ln:
            break
        out.append(pickle.loads(buf[i + 4:i + 4 + ln]))
        i += 4 + ln
    if i:
        del buf[:i]
    return out


def _text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def _drop_privileges(uid: int) -> None:
    if os.geteuid() != 0 or uid == 0:
        return
    try:
        gid = pwd.getpwuid(uid).pw_gid
    except KeyError:
        gid = uid
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _child(fn, name: str, pid: int, uid: int, rfd: int, wfd: int, close_fds: list[int]) -> None:
    """The worker's loop: read messages, call the handler, write the answers."""
    # Forked from the dispatcher: drop its signal handlers and wake-up pipe. Ctrl-C is
    # the dispatcher's to handle; SIGTERM (its shutdown) ends the worker at once.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)   # die with the dispatcher
    except (OSError, AttributeError):
        pass
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _drop_privileges(uid)
    buf = bytearray()
    while True:
        chunk = os.read(rfd, 1 << 18)
        if not chunk:
            return
        buf += chunk
        replies = []
        for addr, data, _ in unframe(buf):
            if data is None:                       # end of file on a TCP connection
                replies.append(frame((addr, None, True)))
                continue
            proto, laddr, lport, raddr, rport, conn = addr
            info = {"proto": proto, "family": 4 if len(laddr) == 4 else 6,
                    "src": _text(raddr), "sport": rport, "dst": _text(laddr), "dport": lport,
                    "conn": conn, "process": name, "pid": pid}
            try:
                answer = fn(data, info)
            except Exception as err:      # the handler's bug: one line, the worker goes on
                print(f"demux live: handler {name} (pid {pid}): {type(err).__name__}: {err}",
                      file=sys.stderr, flush=True)
                answer = None
            if answer is not None and not isinstance(answer, (bytes, bytearray, memoryview)):
                print(f"demux live: handler {name} (pid {pid}) returned {type(answer).__name__}, "
                      "not bytes: ignored", file=sys.stderr, flush=True)
                answer = None
            replies.append(frame((addr, bytes(answer) if answer else None, bool(info.get("close")))))
        out = b"".join(replies)
        while out:
            n = os.write(wfd, out)
            out = out[n:]


class Worker:
    """The dispatcher's end of one scenario process's OS process and its channel."""

    def __init__(self, proc, fn, limit: int):
        self.proc = proc            # the kernel's ProcState (name, pid, uid, index)
        self.fn = fn
        self.limit = max(1, limit)
        self.os_proc = None
        self.to_child = -1          # our write end (non-blocking)
        self.from_child = -1        # our read end (non-blocking)
        self.pending = bytearray()  # framed messages not yet taken by the pipe
        self.inbuf = bytearray()
        self.outstanding = 0        # messages sent and not yet answered
        self.restarts = 0

    def fds(self) -> list[int]:
        return [fd for fd in (self.to_child, self.from_child) if fd >= 0]

    def start(self, close_in_child: list[int]) -> None:
        r1, w1 = os.pipe()          # dispatcher -> worker
        r2, w2 = os.pipe()          # worker -> dispatcher
        ctx = multiprocessing.get_context("fork")
        p = self.proc
        self.os_proc = ctx.Process(
            target=_child, name=f"demux-{p.name}-{p.pid}", daemon=True,
            args=(self.fn, p.name, p.pid, p.uid, r1, w2, close_in_child + [w1, r2]))
        self.os_proc.start()
        os.close(r1)
        os.close(w2)
        os.set_blocking(w1, False)
        os.set_blocking(r2, False)
        self.to_child, self.from_child = w1, r2
        self.pending.clear()
        self.inbuf.clear()
        self.outstanding = 0

    @property
    def sentinel(self) -> int:
        return self.os_proc.sentinel

    def full(self) -> bool:
        return self.outstanding >= self.limit

    def put(self, addr: tuple, data: bytes | None, force: bool = False) -> bool:
        """Queue one message; False (and nothing queued) when the channel is full.
        ``force`` is for end-of-file marks, which must never be lost."""
        if not force and self.outstanding >= self.limit:
            return False
        self.pending += frame((addr, data, None))
        self.outstanding += 1
        return True

    def flush(self) -> None:
        """Hand what the pipe takes now to the worker; the rest waits for POLLOUT."""
        if not self.pending:
            return
        try:
            n = os.write(self.to_child, self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except BrokenPipeError:
            self.pending.clear()     # the worker is gone; its sentinel says so next
            return
        del self.pending[:n]

    def replies(self) -> list:
        """Answers the worker has written: [(addr, answer, close)]."""
        try:
            while True:
                chunk = os.read(self.from_child, 1 << 18)
                if not chunk:
                    break
                self.inbuf += chunk
                if len(chunk) < (1 << 18):
                    break
        except (BlockingIOError, InterruptedError):
            pass
        out = unframe(self.inbuf)
        self.outstanding -= len(out)
        return out

    def close_fds(self) -> None:
        for fd in self.fds():
            try:
                os.close(fd)
            except OSError:
                pass
        self.to_child = self.from_child = -1

    def reap(self) -> str:
        """Collect a dead worker; a phrase saying how it ended."""
        self.os_proc.join(1.0)
        code = self.os_proc.exitcode
        self.close_fds()
        if code is None:
            return "stopped answering"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    def stop(self) -> None:
        if self.os_proc is not None and self.os_proc.is_alive():
            self.os_proc.terminate()
            self.os_proc.join(2.0)
            if self.os_proc.is_alive():
                self.os_proc.kill()
                self.os_proc.join(1.0)
        self.close_fds()
