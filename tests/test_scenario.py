"""Scenario files that describe no possible host are refused with one line (SPEC §1)."""

from __future__ import annotations

import pytest

from demux import scenario as scen
from demux.errors import DemuxError

BASE = '[host]\naddresses = ["10.0.0.1"]\n'


@pytest.mark.parametrize("text, needle", [
    (BASE + '[[process]]\nname = "a"\npid = 7\n[[process]]\nname = "b"\npid = 7\n',
     "pid 7 is already process 'a'"),
    (BASE + '[[process]]\nname = "a"\nsockets = [ { proto = "tcp", bind = "0.0.0.0:80", fd = 3 },\n'
     '  { proto = "udp", bind = "0.0.0.0:53", fd = 3 } ]\n', "fd 3 is also sockets[0]"),
    (BASE + '[[process]]\nname = "a"\nsockets = [ { proto = "tcp", bind = "0.0.0.0:80", at = 5, close_at = 2 } ]\n',
     "close_at (2 s) is before at (5 s)"),
    (BASE + '[sysctl]\n"net.ipv4.ip_unprivileged_port_start" = 70000\n', "at most 65535"),
    (BASE + '[[process]]\nname = "a"\nsockets = [ { proto = "tcp", bind = "0.0.0.0:80", at = nan } ]\n',
     "at must be a finite number of seconds >= 0, got nan"),
    (BASE + '[[process]]\nname = "a"\nsockets = [ { proto = "tcp", bind = "0.0.0.0:80", close_at = inf } ]\n',
     "close_at must be a finite number of seconds >= 0, got inf"),
    (BASE + '[[process]]\nname = "a"\nsockets = [ { proto = "tcp", bind = "0.0.0.0:80", at = -1 } ]\n',
     "at must be a finite number"),
    (BASE + '[sysctl]\n"net.ipv4.tcp_tw_reuse" = 3\n', "at most 2"),
    (BASE + '[[process]]\nname = "a"\npid = 4194305\n', "pid must be within 1..4194304"),
    (BASE + '[[process]]\nname = "a"\npid = 0\n', "pid must be within 1..4194304"),
])
def test_refused(text, needle):
    with pytest.raises(DemuxError) as e:
        scen.loads(text, "x.toml")
    msg = str(e.value)
    assert needle in msg and msg.startswith("x.toml: ") and "\n" not in msg


def test_fd_reused_after_close_is_fine():
    sc = scen.loads(BASE + '[[process]]\nname = "a"\nsockets = [\n'
                    '  { proto = "tcp", bind = "0.0.0.0:80", fd = 3, close_at = 1 },\n'
                    '  { proto = "tcp", bind = "0.0.0.0:81", fd = 3, at = 2 } ]\n')
    assert [s.fd for s in sc.processes[0].sockets] == [3, 3]
