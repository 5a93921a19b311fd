"""pcaps/make_captures.py really makes a capture: run it for `http4` into a temporary
directory and check the pcap, the scenario and the kernel's own record agree."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "pcaps" / "make_captures.py"
SOCKET_KEYS = {"proto", "bind", "connect", "listen", "backlog", "reuseaddr", "reuseport",
               "v6only", "device", "fd", "accept", "at", "close_at"}


@pytest.mark.netns
def test_make_http4(tmp_path, netns_available):
    run = subprocess.run([sys.executable, str(SCRIPT), "--only", "http4", "--outdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    pcap, scen, kern = (tmp_path / f"http4{ext}" for ext in (".pcap", ".toml", ".kernel.json"))
    assert pcap.exists() and scen.exists() and kern.exists()

    scenario = tomllib.loads(scen.read_text())
    assert "10.77.0.1" in scenario["host"]["addresses"]
    [httpd] = scenario["process"]
    assert {"name", "pid", "uid", "sockets"} <= set(httpd)
    [listener] = httpd["sockets"]
    assert set(listener) <= SOCKET_KEYS
    assert (listener["proto"], listener["bind"]) == ("tcp", "0.0.0.0:8080")

    kernel = json.loads(kern.read_text())
    flows = kernel["flows"]
    assert len(flows) >= 4
    for f in flows:
        assert f["outcome"] == "accepted" and f["process"] == "httpd"
        assert (f["pid"], f["fd"]) == (httpd["pid"], listener["fd"])
        assert f["local"] == "10.77.0.1:8080" and f["client"].startswith("10.77.0.2:")
        assert f["accepted_fd"] > listener["fd"]

    from scapy.all import IP, TCP, rdpcap
    syns = {f"{p[IP].src}:{p[TCP].sport}" for p in rdpcap(str(pcap))
            if TCP in p and p[TCP].flags == "S" and p[TCP].dport == 8080}
    assert syns == {f["client"] for f in flows}
    assert kernel["packet_counts"]["syn"] == len(syns)
