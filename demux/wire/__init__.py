"""The wire layer: frames in, parsed ``Packet`` objects out. Pure; no I/O.

``parse`` is the fast parser, ``fields`` the one table of header layouts that both the
parser and ``demux.explain`` read, ``walk`` the field-by-field walk for ``explain``,
``reassembly`` the kernel's IP fragment reassembly.
"""

from demux.wire.packet import FragmentInfo, Packet, Quoted, flag_string
from demux.wire.parser import parse

__all__ = ["FragmentInfo", "Packet", "Quoted", "flag_string", "parse"]
