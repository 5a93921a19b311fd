"""The command line end to end: outputs, split and annotated captures, and bad input as
one line with the right exit status (never a traceback)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
PCAPS = os.path.join(ROOT, "pcaps")
SCAN, SCAN_TOML = os.path.join(PCAPS, "scan.pcap"), os.path.join(PCAPS, "scan.toml")


def demux(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "demux", *args], capture_output=True, text=stdin is None,
                          input=stdin, timeout=120, cwd=ROOT)


def test_jsonl_has_spec_fields_in_capture_order():
    r = demux("replay", SCAN, "-s", SCAN_TOML, "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["n"] for d in rows] == list(range(1, len(rows) + 1))
    keys = {"n", "ts", "proto", "src", "dst", "flags", "len", "direction", "verdict", "process", "pid",
            "fd", "socket", "state", "reason", "reply"}
    assert all(keys <= set(d) for d in rows)
    syn = next(d for d in rows if d["flags"] == "S" and d["verdict"] == "deliver")
    assert syn["state"] == "SYN-RECV" and syn["socket"].startswith("tcp LISTEN ")


def test_summary_only_and_counts_add_up():
    r = demux("replay", SCAN, "-s", SCAN_TOML, "--format", "jsonl", "--summary")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    s = json.loads(lines[0])
    assert s["packets"] == sum(s[k] for k in ("deliver", "reject", "drop", "outbound", "ignored", "malformed"))
    assert s["processes"]["dnsd"]["packets"] >= 1


def test_csv_has_a_header_row():
    r = demux("replay", SCAN, "-s", SCAN_TOML, "--format", "csv")
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0][:3] == ["n", "ts", "proto"] and len(rows) > 10


def test_table_ends_with_summary():
    r = demux("replay", SCAN, "-s", SCAN_TOML)
    assert r.returncode == 0 and "delivered per process" in r.stdout and "reply: rst" in r.stdout


def test_stdin_with_and_without_scenario():
    data = open(SCAN, "rb").read()
    for extra in (["-s", SCAN_TOML], []):
        r = demux("replay", "-", *extra, "--format", "jsonl", "--summary", stdin=data)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["packets"] == 94


def test_split_writes_pcaps_that_tcpdump_reads(tmp_path):
    out = tmp_path / "split"
    r = demux("replay", SCAN, "-s", SCAN_TOML, "--format", "jsonl", "--split", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    files = sorted(os.listdir(out))
    assert "rejected.pcap" in files and "dnsd-28374.pcap" in files
    from demux.capture import open_capture
    for name in files:
        stem = name[:-5]
        want = [d["n"] for d in rows if (d["verdict"] == "reject" if stem == "rejected"
                                          else d["verdict"] == "deliver" and f"{d['process']}-{d['pid']}" == stem)]
        with open_capture(str(out / name)) as reader:
            assert sum(1 for _ in reader) == len(want), name
        if shutil.which("tcpdump"):
            t = subprocess.run(["tcpdump", "-nr", str(out / name)], capture_output=True, text=True, timeout=30)
            assert t.returncode == 0 and len(t.stdout.splitlines()) == len(want), t.stderr


def test_annotate_writes_comments_tshark_shows(tmp_path):
    out = tmp_path / "a.pcapng"
    r = demux("replay", SCAN, "-s", SCAN_TOML, "--summary", "--annotate", str(out))
    assert r.returncode == 0, r.stderr
    from demux.capture import open_capture
    with open_capture(str(out)) as reader:
        assert sum(1 for _ in reader) == 94
    if not shutil.which("tshark"):
        pytest.skip("tshark not installed")
    t = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.comment"],
                       capture_output=True, text=True, timeout=60)
    comments = [c for c in t.stdout.splitlines() if c]
    assert len(comments) == 94 and all(c.startswith("demux:") for c in comments)
    assert any("demux: deliver dnsd pid=28374 fd=3" in c for c in comments)


def test_check_json_and_exit_status():
    r = demux("check", SCAN_TOML, "--json")
    assert r.returncode == 0
    calls = json.loads(r.stdout)
    assert {c["result"] for c in calls} == {"ok"}
    assert set(calls[0]) >= {"process", "pid", "fd", "proto", "call", "local", "result", "why"}


def test_ss_matches_iproute2_columns():
    r = demux("ss", "-s", SCAN_TOML, "-tlnp")
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["State", "Recv-Q"]
    assert any('users:(("spec9000",pid=28365,fd=3))' in line and "10.77.0.1:9000" in line for line in lines)


def test_ss_at_a_time_of_a_capture():
    http = os.path.join(PCAPS, "http4.pcap")
    r = demux("ss", "--capture", http, "-s", os.path.join(PCAPS, "http4.toml"), "-tan", "--at", "0.0025")
    assert r.returncode == 0, r.stderr
    assert "ESTAB" in r.stdout or "SYN-RECV" in r.stdout


@pytest.mark.parametrize("args,status,needle", [
    (["replay", "/nonexistent.pcap"], 2, "/nonexistent.pcap"),
    (["replay", os.path.join(PCAPS, "scan.toml")], 2, "not a capture"),
    (["replay", SCAN, "-s", "/nonexistent.toml"], 2, "/nonexistent.toml"),
    (["check", SCAN], 2, "scan.pcap"),
    (["explain", SCAN, "-n", "100000"], 2, "no packet 100000"),
    (["ss", "--at", "1"], 2, "--at needs --capture"),
    (["import-ss", "/nonexistent.txt"], 2, "/nonexistent.txt"),
])
def test_bad_input_is_one_line_and_a_status(args, status, needle):
    r = demux(*args)
    assert r.returncode == status, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


def test_truncated_capture_reports_up_to_the_damage(tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(open(SCAN, "rb").read()[:3000])
    r = demux("replay", str(cut), "-s", SCAN_TOML, "--format", "jsonl")
    assert r.returncode == 1
    assert "truncated at byte" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stdout.splitlines()) >= 10


def test_cli_starts_without_heavy_imports():
    code = ("import sys; from demux import cli; "
            "print(any(m.split('.')[0] in ('scapy', 'numba', 'numpy') for m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("args,needle", [
    (["replay", SCAN, "--format", "xml"], "demux replay: error: argument --format: invalid choice: 'xml'"),
    (["explain", SCAN, "-n", "abc"], "demux explain: error: argument -n: invalid int value: 'abc'"),
    (["explain", SCAN], "demux explain: error: the following arguments are required: -n"),
    (["ss", "--at", "abc"], "demux ss: error: argument --at: invalid float value: 'abc'"),
    (["replay"], "demux replay: error: the following arguments are required: capture"),
    (["live", "--tun", "t0"], "demux live: error: the following arguments are required: -s/--scenario"),
    (["nosuch"], "demux: error: argument COMMAND: invalid choice: 'nosuch'"),
    ([], "demux: error: the following arguments are required: COMMAND"),
    (["replay", SCAN, "--workers", "0"], "demux replay: error: argument --workers: must be at least 1, got 0"),
    (["bench", "--repeat", "-2"], "demux bench: error: argument --repeat: must be at least 1, got -2"),
    (["ss", "--at", "-1"], "demux ss: error: argument --at: must be a finite number of seconds >= 0, got -1"),
])
def test_usage_errors_are_one_line(args, needle):
    r = demux(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(needle) and len(r.stderr.splitlines()) == 1, r.stderr


def test_help_is_still_the_full_help():
    r = demux("replay", "-h")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("usage: demux replay") and "--annotate OUT" in r.stdout


@pytest.mark.parametrize("fmt", ["table", "csv", "jsonl"])
@pytest.mark.parametrize("capture", ["/nonexistent.pcap", SCAN_TOML, "empty"])
def test_unreadable_capture_prints_nothing_on_stdout(tmp_path, fmt, capture):
    if capture == "empty":
        capture = str(tmp_path / "empty.pcap")
        open(capture, "wb").close()
    r = demux("replay", capture, "-s", SCAN_TOML, "--format", fmt, "--split", str(tmp_path / "d"))
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert len(r.stderr.splitlines()) == 1 and capture in r.stderr
    assert not os.path.exists(tmp_path / "d")


def test_ts_has_six_decimals_in_every_engine_and_format(tmp_path):
    # SPEC §3's example: "ts": 1764000000.000100 (tcpdump's spelling, zeros kept).
    from scapy.all import IP, TCP, Ether, wrpcap
    pkts = []
    for i, t in enumerate(("1764000000.000100", "1764000000.000000", "1764000000.5")):
        p = Ether() / IP(src="10.1.0.2", dst="10.0.0.1") / TCP(sport=40000 + i, dport=80, flags="S")
        from decimal import Decimal
        p.time = Decimal(t)
        pkts.append(p)
    cap = tmp_path / "t.pcap"
    wrpcap(str(cap), pkts, nano=True)
    toml = tmp_path / "t.toml"
    toml.write_text('[host]\naddresses = ["10.0.0.1"]\n')
    want = ["1764000000.000100", "1764000000.000000", "1764000000.500000"]
    for engine in ("reference", "batch"):
        r = demux("replay", str(cap), "-s", str(toml), "--format", "jsonl", "--engine", engine)
        assert r.returncode == 0, r.stderr
        assert [line.split('"ts": ')[1].split(",")[0] for line in r.stdout.splitlines()] == want, engine
    r = demux("replay", str(cap), "-s", str(toml), "--format", "csv")
    assert [row["ts"] for row in csv.DictReader(io.StringIO(r.stdout))] == want


def test_truncated_capture_warns_everywhere_it_is_read(tmp_path):
    # As replay (SPEC §3): the packets before the damage are used, a warning names the
    # offset, exit status 1 -- for infer and ss --capture too.
    data = open(os.path.join(PCAPS, "http4.pcap"), "rb").read()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) // 2 + 5])
    toml = os.path.join(PCAPS, "http4.toml")
    for args, out_has in ((("infer", str(cut)), "[host]"),
                          (("ss", "--capture", str(cut), "-s", toml, "-tan"), "LISTEN"),
                          (("replay", str(cut), "-s", toml, "--summary"), '"packets"')):
        r = demux(*args)
        assert r.returncode == 1, (args, r.stderr)
        assert out_has in r.stdout
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and "warning" in lines[0] and "truncated at byte" in lines[0], args
    r = demux("explain", str(cut), "-n", "500", "-s", toml)
    assert r.returncode == 2 and "before its damage" in r.stderr and r.stderr.count("\n") == 1


def test_bench_prints_both_tables():
    r = demux("bench", "--packets", "3000")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("dpkt loop") >= 2 and "long flows" in r.stdout and "machine:" in r.stdout
