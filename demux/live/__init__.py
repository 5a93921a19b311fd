"""``demux live``: the emulated host answering real traffic through a TUN interface.

    TUN (tun.py) -> wire.parse -> kernel.input -> stack.py (TCP) / UDP -> handlers.py
                 <- packets.py (replies, RST, ICMP) <- kernel.output (state follows)

``packets`` and ``stack`` are pure (bytes in, bytes out, unit-tested with byte
arrays); ``tun`` and ``dispatcher`` are the only modules that touch the OS, and
``handlers`` runs the scenario's processes as real OS processes.
"""
