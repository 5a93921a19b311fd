"""The emulated Linux kernel: socket table, bind rules, lookup and TCP state. Sans-IO.

Everything demux knows about Linux lives in this package, each rule beside the name of
the kernel function it comes from: ``bind`` (conflicts, ephemeral ports), ``lookup``
(listener and UDP scoring, SO_REUSEPORT), ``tcp_states`` (the state table) and
``table`` (the socket calls and what a packet does).
"""

from demux.kernel.sock import Sock
from demux.kernel.table import Conn, Kernel, Lookup, Outcome, Verdict

__all__ = ["Kernel", "Sock", "Conn", "Lookup", "Outcome", "Verdict"]
