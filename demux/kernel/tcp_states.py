"""TCP connection states and every transition demux makes between them, in one table.

Everything that moves a connection from one state to another lives here (the h11 rule).
States use ``ss`` spelling. A segment is classified into an event seen from the host:
its direction (``in`` received, ``out`` sent) and what it carries. The table maps
(state, direction, event) to the next state; a pair missing from the table leaves the
state unchanged, as the kernel does for a segment that carries nothing new (data, a
duplicate ACK, a retransmission). Sources: RFC 9293 §3.3.2 and net/ipv4/tcp_input.c
``tcp_rcv_state_process``, ``tcp_fin``; net/ipv4/tcp.c ``tcp_close_state``.
"""

from __future__ import annotations

LISTEN = "LISTEN"
SYN_SENT = "SYN-SENT"
SYN_RECV = "SYN-RECV"
ESTAB = "ESTAB"
FIN_WAIT_1 = "FIN-WAIT-1"
FIN_WAIT_2 = "FIN-WAIT-2"
CLOSE_WAIT = "CLOSE-WAIT"
CLOSING = "CLOSING"
LAST_ACK = "LAST-ACK"
TIME_WAIT = "TIME-WAIT"
CLOSE = "CLOSE"

# Events: what a segment means for the state machine.
SYN = "syn"              # SYN without ACK
SYNACK = "synack"        # SYN with ACK
ACK = "ack"              # anything else without FIN/RST (data, pure ACK)
ACK_FIN = "ack-fin"      # an ACK that covers the FIN we sent
FIN = "fin"              # FIN that does not acknowledge our FIN
FIN_ACK_FIN = "fin+ack-fin"   # FIN that also acknowledges our FIN
RST = "rst"

TRANSITIONS: dict[str, dict[tuple[str, str], str]] = {
    SYN_SENT: {("in", SYNACK): ESTAB,            # tcp_rcv_synsent_state_process
               ("in", SYN): SYN_RECV,            # simultaneous open
               ("in", RST): CLOSE, ("out", RST): CLOSE},
    SYN_RECV: {("in", ACK): ESTAB,               # tcp_check_req -> child socket
               ("in", ACK_FIN): ESTAB,
               ("in", FIN): CLOSE_WAIT,          # final ACK carrying a FIN
               ("in", RST): CLOSE, ("out", RST): CLOSE},
    ESTAB: {("in", FIN): CLOSE_WAIT, ("in", FIN_ACK_FIN): CLOSE_WAIT,
            ("out", FIN): FIN_WAIT_1,
            ("in", RST): CLOSE, ("out", RST): CLOSE},
    FIN_WAIT_1: {("in", ACK_FIN): FIN_WAIT_2,
                 ("in", FIN): CLOSING,
                 ("in", FIN_ACK_FIN): TIME_WAIT,
                 ("in", RST): CLOSE, ("out", RST): CLOSE},
    FIN_WAIT_2: {("in", FIN): TIME_WAIT, ("in", FIN_ACK_FIN): TIME_WAIT,
                 ("in", RST): CLOSE, ("out", RST): CLOSE},
    CLOSING: {("in", ACK_FIN): TIME_WAIT, ("in", FIN_ACK_FIN): TIME_WAIT,
              ("in", RST): CLOSE, ("out", RST): CLOSE},
    CLOSE_WAIT: {("out", FIN): LAST_ACK,
                 ("in", RST): CLOSE, ("out", RST): CLOSE},
    LAST_ACK: {("in", ACK_FIN): CLOSE, ("in", FIN_ACK_FIN): CLOSE,
               ("in", RST): CLOSE, ("out", RST): CLOSE},
    TIME_WAIT: {},
}

# TCP_TIMEWAIT_LEN (include/net/tcp.h): 60 s.
TIME_WAIT_SECONDS = 60.0
# A request socket lives through tcp_synack_retries (5) retransmissions: 1+2+4+8+16+32 s.
SYN_RECV_SECONDS = 63.0


def next_state(state: str, direction: str, event: str) -> str:
    """The state after a segment; unchanged when the table has no entry."""
    return TRANSITIONS.get(state, {}).get((direction, event), state)
