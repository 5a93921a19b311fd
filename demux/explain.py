"""The teacher: one packet, every field, then the ports, the lookup and the verdict.

Pure. ``describe(packet)`` turns a parsed ``Packet`` into the document of SPEC §4
(``layers`` with every field's Wireshark name, offset and width in bits, raw value and
meaning; ``ports`` with category, service and ephemeral range), read off the same field
table the parser uses (``demux.wire.walk``). ``render_text`` lays that document out for
people: a table per layer, an RFC 793-style bit diagram of the TCP or UDP header with the
values filled in, the ports, and the lookup steps and verdict when the engine gives them.
"""

from __future__ import annotations

import textwrap

from demux import services
from demux.wire import fields as F
from demux.wire.packet import TCP, UDP, Packet, flag_string
from demux.wire.walk import walk

_PROTO_NAMES = {TCP: "tcp", UDP: "udp"}


def describe(packet: Packet, port_range: tuple[int, int] = services.EPHEMERAL_DEFAULT) -> dict:
    """``{"layers": [...], "ports": {...} | None}`` for one packet (SPEC §4)."""
    layers = walk(packet.linktype, packet.data)
    ports = None
    proto = _PROTO_NAMES.get(packet.proto)
    if proto and packet.frag is None and packet.l4_off >= 0 and packet.error is None:
        ports = {"proto": proto,
                 "src": services.describe_port(packet.sport, proto, port_range),
                 "dst": services.describe_port(packet.dport, proto, port_range),
                 "ephemeral_range": list(port_range)}
    return {"layers": layers, "ports": ports}


# -- the bit diagram ----------------------------------------------------------------

_LABELS = {
    "tcp.srcport": "Source Port", "tcp.dstport": "Destination Port",
    "tcp.seq_raw": "Sequence Number", "tcp.ack_raw": "Acknowledgment Number",
    "tcp.hdr_len": "Offs", "tcp.flags.res": "Rsv", "tcp.flags.ae": "A",
    "tcp.flags.cwr": "C", "tcp.flags.ece": "E", "tcp.flags.urg": "U", "tcp.flags.ack": "A",
    "tcp.flags.push": "P", "tcp.flags.reset": "R", "tcp.flags.syn": "S", "tcp.flags.fin": "F",
    "tcp.window_size_value": "Window", "tcp.checksum": "Checksum",
    "tcp.urgent_pointer": "Urgent Pointer",
    "udp.srcport": "Source Port", "udp.dstport": "Destination Port",
    "udp.length": "Length", "udp.checksum": "Checksum",
}
_RULE = "+" + "-+" * 32


def bit_diagram(header: F.Header, values: dict, options: str | None = None) -> str:
    """The header drawn 32 bits to a row, each field's label and value in its cell.

    ``values`` maps field names to the raw values to print (missing: blank).
    """
    lines = [" 0                   1                   2                   3",
             " " + " ".join(str(i % 10) for i in range(32)), _RULE]
    rows: dict[int, list[F.Field]] = {}
    for fld in header.fields:
        rows.setdefault(fld.offset // 32, []).append(fld)
    for row in sorted(rows):
        label_line, value_line = "|", "|"
        for fld in rows[row]:
            width = 2 * fld.width - 1
            label = _LABELS.get(fld.name, fld.name.rsplit(".", 1)[-1])
            value = values.get(fld.name, "")
            if isinstance(value, int) and fld.scale != 1:
                value //= fld.scale              # the diagram shows the bits as sent
            label_line += label[:width].center(width) + "|"
            value_line += str(value)[:width].center(width) + "|"
        lines += [label_line, value_line, _RULE]
    if options:
        for chunk in textwrap.wrap(options, 61, break_on_hyphens=False) or [""]:
            lines.append("|" + chunk.center(63) + "|")
        lines.append(_RULE)
    return "\n".join(lines)


def _options_summary(fields: list[dict]) -> str:
    """One line naming the TCP options of a layer, for the diagram's options row."""
    parts = []
    for fl in fields:
        name, value = fl["name"], fl["value"]
        if name == "tcp.options.mss_val":
            parts.append(f"MSS={value}")
        elif name == "tcp.options.wscale.shift":
            parts.append(f"WS={value}")
        elif name == "tcp.options.sack_perm":
            parts.append("SACK_PERM")
        elif name == "tcp.options.timestamp.tsval":
            parts.append(f"TS val={value}")
        elif name == "tcp.options.timestamp.tsecr":
            parts[-1] += f" ecr={value}"
        elif name == "tcp.options.sack_le":
            parts.append(f"SACK {value}")
        elif name == "tcp.options.sack_re":
            parts[-1] += f"-{value}"
        elif name == "tcp.options.nop":
            parts.append("NOP")
        elif name == "tcp.options.eol":
            parts.append("EOL")
        elif name == "tcp.options.tfo.cookie":
            parts.append(f"TFO cookie={value}")
        elif name == "tcp.options.experimental.exid":
            parts.append(f"EXP 0x{value:04x}")
        elif name == F.TCP_OPT_DATA_NAME:
            parts.append(f"opt={value}")
    return " ".join(parts)


def _transport_diagram(doc: dict) -> tuple[str, str] | None:
    for layer in doc["layers"]:
        if layer["name"] in (F.TCP.name, F.UDP.name):
            header = F.TCP if layer["name"] == F.TCP.name else F.UDP
            values = {fl["name"]: fl["value"] for fl in layer["fields"]}
            fixed = {fl.name for fl in header.fields}
            if not fixed <= values.keys():
                return None
            opts = _options_summary(layer["fields"]) if header is F.TCP else ""
            if header is F.TCP and values["tcp.hdr_len"] > 20:
                opts = f"Options ({values['tcp.hdr_len'] - 20} bytes): {opts}"
            return layer["name"], bit_diagram(header, values, opts or None)
    return None


# -- text for people ----------------------------------------------------------------

def render_text(doc: dict, lookup_steps: list[str] | None = None, verdict: dict | None = None,
                packet: Packet | None = None):
    """A rich renderable: layer tables, the bit diagram, ports, lookup, verdict."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    parts = []
    if packet is not None:
        head = (f"packet {packet.n}: {len(packet.data)} bytes captured"
                f"{'' if packet.orig_len == len(packet.data) else f' of {packet.orig_len}'}, "
                f"link type {packet.linktype}")
        if packet.proto == TCP and packet.l4_len >= 14:
            head += f", TCP flags {flag_string(packet.flags)}"
        parts.append(Text(head, style="bold"))
        if packet.frag is not None:
            parts.append(Text(f"IP fragment: id {packet.frag.ident}, offset {packet.frag.offset} bytes, "
                              f"{'more follow' if packet.frag.more else 'last'}; the kernel "
                              "reassembles the datagram before any socket lookup"))
        if packet.error:
            parts.append(Text(f"malformed: {packet.error}", style="bold red"))
    for layer in doc["layers"]:
        table = Table(title=layer["name"], title_justify="left", title_style="bold cyan",
                      show_lines=False, expand=False)
        table.add_column("field", style="green", no_wrap=True)
        table.add_column("offset", justify="right")
        table.add_column("width", justify="right")
        table.add_column("value", justify="right", overflow="fold")
        table.add_column("meaning")
        for fl in layer["fields"]:
            table.add_row(fl["name"], str(fl["offset_bits"]), str(fl["width_bits"]),
                          _show(fl["value"]), fl["meaning"])
        parts.append(table)
    diagram = _transport_diagram(doc)
    if diagram:
        parts.append(Panel(Text(diagram[1]), title=f"{diagram[0]} header, bit by bit (RFC 9293/768 layout)",
                           expand=False))
    ports = doc.get("ports")
    if ports:
        table = Table(title=f"Ports ({ports['proto']})", title_justify="left", title_style="bold cyan")
        for col in ("end", "port", "category", "service", "ephemeral range"):
            table.add_column(col)
        lo, hi = ports["ephemeral_range"]
        for end in ("src", "dst"):
            info = ports[end]
            table.add_row("source" if end == "src" else "destination", str(info["port"]),
                          info["category"], info["service"] or "-",
                          f"{'inside' if info['ephemeral'] else 'outside'} {lo}-{hi}")
        parts.append(table)
    if lookup_steps:
        text = Text("Lookup, as the kernel makes it\n", style="bold cyan")
        for i, step in enumerate(lookup_steps, 1):
            text.append(f"{i:>3}. {step}\n")
        parts.append(text)
    if verdict:
        line = f"verdict: {verdict.get('verdict')}"
        if verdict.get("process"):
            line += f" -> {verdict['process']} (pid {verdict.get('pid')}, fd {verdict.get('fd')})"
        if verdict.get("reason"):
            line += f"; {verdict['reason']}"
        if verdict.get("reply"):
            line += f"; reply {verdict['reply']}"
        parts.append(Text(line, style="bold"))
    return Group(*parts)


def _show(value) -> str:
    if isinstance(value, int):
        return f"{value} (0x{value:x})" if value > 9 else str(value)
    return str(value)
