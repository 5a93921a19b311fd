"""Port facts for people: category, ephemeral range, service name.

Categories are IANA's (RFC 6335): well-known 0-1023, registered 1024-49151, dynamic
49152-65535. Whether a port lies in the host's ephemeral range is a separate question
(Linux's default ``net.ipv4.ip_local_port_range`` is 32768-60999, which overlaps both
registered and dynamic). Service names come from ``/etc/services`` when the machine has
one, else from a built-in table of the common ports, so output does not depend on the
host more than it must.
"""

from __future__ import annotations

import os

EPHEMERAL_DEFAULT = (32768, 60999)      # net.ipv4.ip_local_port_range
SERVICES_PATH = "/etc/services"

# The common ports, for machines without /etc/services: (port, proto) -> name.
_BUILTIN_TCP_UDP = {
    7: "echo", 9: "discard", 13: "daytime", 19: "chargen", 37: "time", 53: "domain",
    88: "kerberos", 111: "sunrpc", 123: "ntp", 389: "ldap", 464: "kpasswd", 500: "isakmp",
    636: "ldaps", 749: "kerberos-adm", 1812: "radius", 1813: "radius-acct", 2049: "nfs",
    3478: "stun", 5060: "sip", 5353: "mdns", 4500: "ipsec-nat-t",
}
_BUILTIN_TCP = {
    20: "ftp-data", 21: "ftp", 22: "ssh", 23: "telnet", 25: "smtp", 43: "whois",
    70: "gopher", 79: "finger", 80: "http", 110: "pop3", 113: "auth", 119: "nntp",
    139: "netbios-ssn", 143: "imap2", 179: "bgp", 443: "https", 445: "microsoft-ds",
    465: "submissions", 513: "login", 514: "shell", 515: "printer", 543: "klogin",
    587: "submission", 631: "ipp", 873: "rsync", 993: "imaps", 995: "pop3s",
    1080: "socks", 1433: "ms-sql-s", 1521: "ncube-lm", 1883: "mqtt", 2375: "docker",
    3306: "mysql", 3389: "ms-wbt-server", 5432: "postgresql", 5672: "amqp", 5900: "vnc",
    6379: "redis", 6443: "sun-sr-https", 6667: "ircd", 8080: "http-alt", 8443: "https-alt",
    9090: "websm", 9092: "kafka", 9200: "wap-wsp", 11211: "memcache", 27017: "mongodb",
}
_BUILTIN_UDP = {
    67: "bootps", 68: "bootpc", 69: "tftp", 137: "netbios-ns", 138: "netbios-dgm",
    161: "snmp", 162: "snmp-trap", 443: "https", 514: "syslog", 520: "router",
    546: "dhcpv6-client", 547: "dhcpv6-server", 1194: "openvpn", 1900: "ssdp",
    4789: "vxlan", 51820: "wireguard",
}

_table: dict[tuple[int, str], str] | None = None


def category(port: int) -> str:
    """``well-known`` (0-1023), ``registered`` (1024-49151) or ``dynamic`` (49152-65535)."""
    if port < 1024:
        return "well-known"
    if port < 49152:
        return "registered"
    return "dynamic"


def in_ephemeral(port: int, port_range: tuple[int, int] = EPHEMERAL_DEFAULT) -> bool:
    """Whether ``port`` lies in the ephemeral range (inclusive, as the sysctl is)."""
    lo, hi = port_range
    return lo <= port <= hi


def parse_services(text: str) -> dict[tuple[int, str], str]:
    """``/etc/services`` text -> {(port, proto): name}; the first line for a port wins."""
    table: dict[tuple[int, str], str] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2 or "/" not in words[1]:
            continue
        port, _, proto = words[1].partition("/")
        if port.isdigit():
            table.setdefault((int(port), proto.lower()), words[0])
    return table


def builtin_table() -> dict[tuple[int, str], str]:
    table = {}
    for port, name in _BUILTIN_TCP_UDP.items():
        table[(port, "tcp")] = table[(port, "udp")] = name
    table.update(((port, "tcp"), name) for port, name in _BUILTIN_TCP.items())
    table.update(((port, "udp"), name) for port, name in _BUILTIN_UDP.items())
    return table


def _services() -> dict[tuple[int, str], str]:
    global _table
    if _table is None:
        table = {}
        if os.path.exists(SERVICES_PATH):
            try:
                with open(SERVICES_PATH, encoding="utf-8", errors="replace") as fh:
                    table = parse_services(fh.read())
            except OSError:
                table = {}
        _table = table or builtin_table()
    return _table


def service(port: int, proto: str = "tcp") -> str | None:
    """The service name of ``port``/``proto`` (``http`` for 80/tcp), or None."""
    return _services().get((port, proto.lower()))


def describe_port(port: int, proto: str = "tcp",
                  port_range: tuple[int, int] = EPHEMERAL_DEFAULT) -> dict:
    """Everything above about one port, as ``explain`` shows it."""
    return {"port": port, "category": category(port), "service": service(port, proto),
            "ephemeral": in_ephemeral(port, port_range)}
