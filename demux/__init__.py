"""demux: which process would have received this packet, and why.

A user-space emulation of Linux port demultiplexing: a pure core (``demux.wire``
parses headers, ``demux.kernel`` is the emulated socket table) and thin edges
(capture readers, scenario files, renderers, the CLI, live TUN dispatch).
"""

__version__ = "0.1.0"
