"""``--split`` and ``--annotate`` outputs: they never harm an input, never land outside
DIR, cover every process, hold every timestamp they can and refuse the rest in one line
(SPEC §3 and "Errors, everywhere": nothing the user gave is modified)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys

import pytest

from demux.capture import open_capture
from demux.pcapout import PcapngWriter, PcapWriter
from demux.render.split import file_stem

ROOT = os.path.join(os.path.dirname(__file__), "..")
PCAPS = os.path.join(ROOT, "pcaps")
SCAN, SCAN_TOML = os.path.join(PCAPS, "scan.pcap"), os.path.join(PCAPS, "scan.toml")
MIXED, MIXED_TOML = os.path.join(PCAPS, "mixed-pcapng.pcapng"), os.path.join(PCAPS, "mixed-pcapng.toml")
SCAN_PROCS = {"spec9000-28365.pcap", "any9000-28367.pcap", "web-28369.pcap", "dnsd-28374.pcap"}


def demux(*args, stdin=None, cwd=ROOT, **kw):
    return subprocess.run([sys.executable, "-m", "demux", *args], capture_output=True, input=stdin,
                          timeout=120, cwd=cwd, **kw)


def one_line_error(r, status=2):
    err = r.stderr.decode()
    assert r.returncode == status, (r.stdout[-500:], err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def tree(top):
    """Every path under ``top``, relative, so a test sees anything written anywhere."""
    out = set()
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(d, n), top))
    return out


def frames(path):
    with open_capture(str(path)) as r:
        return list(r)


def pcapng_with_ticks(dst, ticks_of, tsresol=6, tsoffset=None, src=SCAN):
    """``src``'s frames as a pcapng whose EPB ticks are ``ticks_of(frame)`` (any 64-bit
    value) on an interface with ``tsresol`` and, if given, ``if_tsoffset`` seconds."""
    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    src_frames = frames(src)
    opts = struct.pack("<HHB3x", 9, 1, tsresol)
    if tsoffset is not None:
        opts += struct.pack("<HHq", 14, 8, tsoffset)
    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(1, struct.pack("<HHI", src_frames[0].linktype, 0, 262144) + opts + b"\0" * 4)]
    for f in src_frames:
        t = ticks_of(f)
        out.append(block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(f.data), f.orig_len)
                         + f.data))
    dst.write_bytes(b"".join(out))
    return dst


def scenario_with_names(tmp_path, names):
    """scan.toml with its processes renamed, in order (spec9000, any9000, web, dnsd)."""
    text = open(SCAN_TOML).read()
    for old, new in zip(("spec9000", "any9000", "web", "dnsd"), names):
        text = text.replace(f'name = "{old}"', f"name = {new!r}".replace("'", '"'), 1)
    path = tmp_path / "names.toml"
    path.write_text(text)
    return path


# --- 1. an output that is an input is refused; the input is never touched ------------------


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "other spelling"])
def test_annotate_onto_the_capture_is_refused_and_leaves_it_intact(tmp_path, how):
    cap = tmp_path / "m.pcapng"
    shutil.copy(MIXED, cap)
    out = {"same path": cap, "symlink": tmp_path / "link.pcapng", "hard link": tmp_path / "hard.pcapng",
           "other spelling": tmp_path / "sub" / ".." / "m.pcapng"}[how]
    if how == "symlink":
        out.symlink_to(cap.name)
    elif how == "hard link":
        os.link(cap, out)
    elif how == "other spelling":
        (tmp_path / "sub").mkdir()
    r = demux("replay", str(cap), "-s", MIXED_TOML, "--summary", "--annotate", str(out))
    err = one_line_error(r)
    assert str(out) in err and "capture being read" in err
    assert cap.read_bytes() == open(MIXED, "rb").read()


@pytest.mark.parametrize("scenario", [True, False])
def test_annotate_onto_the_file_stdin_reads_is_refused(tmp_path, scenario):
    cap = tmp_path / "d.pcap"
    shutil.copy(SCAN, cap)
    with open(cap, "rb") as stdin:
        r = subprocess.run([sys.executable, "-m", "demux", "replay", "-", "--summary", "--annotate", str(cap)]
                           + (["-s", SCAN_TOML] if scenario else []),
                           stdin=stdin, capture_output=True, timeout=120, cwd=ROOT)
    assert "standard input" in one_line_error(r)
    assert cap.read_bytes() == open(SCAN, "rb").read()


@pytest.mark.parametrize("stem", ["rejected", "web-28369"])
def test_split_onto_the_capture_is_refused(tmp_path, stem):
    d = tmp_path / "out"
    d.mkdir()
    cap = d / f"{stem}.pcap"
    shutil.copy(SCAN, cap)
    r = demux("replay", str(cap), "-s", SCAN_TOML, "--summary", "--split", str(d))
    err = one_line_error(r)
    assert str(cap) in err and "--split" in err
    assert cap.read_bytes() == open(SCAN, "rb").read()
    assert os.listdir(d) == [cap.name]


def test_outputs_onto_the_scenario_or_each_other_are_refused(tmp_path):
    sc = tmp_path / "s.toml"
    shutil.copy(SCAN_TOML, sc)
    err = one_line_error(demux("replay", SCAN, "-s", str(sc), "--summary", "--annotate", str(sc)))
    assert "scenario" in err
    assert sc.read_text() == open(SCAN_TOML).read()
    both = tmp_path / "d" / "rejected.pcap"
    err = one_line_error(demux("replay", SCAN, "-s", SCAN_TOML, "--summary",
                               "--split", str(tmp_path / "d"), "--annotate", str(both)))
    assert "--annotate" in err and "--split" in err
    assert tree(tmp_path) == {"s.toml"}


def test_outputs_replace_their_destination_only_when_the_replay_succeeds(tmp_path):
    old = b"an earlier result, kept if this run fails"
    d = tmp_path / "d"
    d.mkdir()
    (d / "rejected.pcap").write_bytes(old)
    (tmp_path / "a.pcapng").write_bytes(old)
    bad = pcapng_with_ticks(tmp_path / "bad.pcapng", lambda f: f.ts_ns // 1000 + (1 << 32) * 10**6)
    r = demux("replay", str(bad), "-s", SCAN_TOML, "--summary", "--split", str(d),
              "--annotate", str(tmp_path / "a.pcapng"))
    one_line_error(r)
    assert (d / "rejected.pcap").read_bytes() == old and (tmp_path / "a.pcapng").read_bytes() == old
    assert tree(tmp_path) == {"d", "d/rejected.pcap", "a.pcapng", "bad.pcapng"}   # no temporaries
    r = demux("replay", SCAN, "-s", SCAN_TOML, "--summary", "--split", str(d),
              "--annotate", str(tmp_path / "a.pcapng"))
    assert r.returncode == 0, r.stderr
    assert len(frames(tmp_path / "a.pcapng")) == 94
    assert tree(d) == SCAN_PROCS | {"rejected.pcap"}


def test_new_outputs_get_the_umask_mode_and_symlinks_are_written_through(tmp_path):
    target = tmp_path / "real.pcapng"
    target.write_bytes(b"old")
    os.chmod(target, 0o604)
    (tmp_path / "link.pcapng").symlink_to("real.pcapng")
    r = demux("replay", SCAN, "-s", SCAN_TOML, "--summary", "--split", str(tmp_path / "d"),
              "--annotate", str(tmp_path / "link.pcapng"), preexec_fn=lambda: os.umask(0o027))
    assert r.returncode == 0, r.stderr
    assert os.path.islink(tmp_path / "link.pcapng") and len(frames(target)) == 94
    assert os.stat(target).st_mode & 0o777 == 0o604               # a replaced file keeps its mode
    assert os.stat(tmp_path / "d" / "rejected.pcap").st_mode & 0o777 == 0o640
    assert demux("replay", SCAN, "-s", SCAN_TOML, "--summary", "--annotate", os.devnull).returncode == 0
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)


def test_a_closed_stdout_does_not_lose_the_files(tmp_path):
    # `demux replay ... --annotate OUT | head -1`: the files still hold the whole capture.
    p = subprocess.Popen([sys.executable, "-m", "demux", "replay", SCAN, "-s", SCAN_TOML, "--format", "jsonl",
                          "--annotate", str(tmp_path / "a.pcapng"), "--split", str(tmp_path / "d")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and "Traceback" not in err
    assert len(frames(tmp_path / "a.pcapng")) == 94
    assert tree(tmp_path / "d") == SCAN_PROCS | {"rejected.pcap"}


# --- 2. process names are file names inside DIR, never paths ------------------------------


def test_file_stem_rules():
    assert file_stem("nginx", 1201) == "nginx-1201"
    assert file_stem("kworker/0:1", 7) == "kworker_0:1-7"
    assert file_stem("../../evil", 7) == "_._.._evil-7"
    assert file_stem(".hidden", 7) == "_hidden-7"
    assert file_stem("a\0b", 7) == "a_b-7"
    long = file_stem("é" * 300, 2**31)
    assert len((long + ".pcap").encode()) <= 255 and long.endswith(f"-{2**31}")
    for name in ("/", "..", ".", "/etc/passwd", "a/../../b"):
        stem = file_stem(name, 1)
        assert "/" not in stem and not stem.startswith(".")


def test_split_keeps_slashed_names_inside_dir(tmp_path):
    sc = scenario_with_names(tmp_path, ["kworker/0:1", "../../evil", ".hidden", "/etc/x"])
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    r = demux("replay", SCAN, "-s", str(sc), "--summary", "--split", "a/out", cwd=work)
    assert r.returncode == 0, r.stderr
    assert tree(work) == {"a", "a/out"} | {f"a/out/{n}" for n in (
        "kworker_0:1-28365.pcap", "_._.._evil-28367.pcap", "_hidden-28369.pcap", "_etc_x-28374.pcap",
        "rejected.pcap")}
    assert len(frames(work / "a/out/_hidden-28369.pcap")) == 13


# --- 4. a file for every process, even one that received nothing ---------------------------


def test_split_writes_a_file_for_every_process(tmp_path):
    sc = tmp_path / "idle.toml"
    sc.write_text(open(SCAN_TOML).read() + '\n[[process]]\nname = "idle"\npid = 4242\n'
                  'sockets = [ { proto = "tcp", bind = "0.0.0.0:7777" } ]\n')
    r = demux("replay", SCAN, "-s", str(sc), "--summary", "--split", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "d") == SCAN_PROCS | {"rejected.pcap", "idle-4242.pcap"}
    idle = tmp_path / "d" / "idle-4242.pcap"
    assert frames(idle) == []
    with open_capture(str(idle)) as reader:
        assert reader.linktypes == {1}                # the capture's own link type
    if shutil.which("tcpdump"):
        t = subprocess.run(["tcpdump", "-nr", str(idle)], capture_output=True, text=True, timeout=30)
        assert t.returncode == 0 and t.stdout == ""


# --- 3. timestamps a format cannot hold ----------------------------------------------------

FAR = {
    # name: (ticks from a frame, tsresol, if_tsoffset)
    "after 2106": (lambda f: f.ts_ns // 1000 + (1 << 32) * 10**6, 6, None),
    "after 2554": (lambda f: (1 << 64) - 1000 + f.n, 6, None),
    "before 1970": (lambda f: f.ts_ns // 1000, 6, -4_000_000_000),
}


@pytest.mark.parametrize("case", sorted(FAR))
def test_split_refuses_timestamps_a_pcap_cannot_hold(tmp_path, case):
    ticks, res, off = FAR[case]
    cap = pcapng_with_ticks(tmp_path / "far.pcapng", ticks, res, off)
    r = demux("replay", str(cap), "-s", SCAN_TOML, "--summary", "--split", str(tmp_path / "d"))
    err = one_line_error(r)
    assert os.path.join(str(tmp_path / "d"), "rejected.pcap") in err and "1970 to 2106" in err
    assert not os.path.exists(tmp_path / "d")     # made for this run, removed with it


@pytest.mark.parametrize("case", sorted(FAR))
def test_annotate_keeps_every_timestamp(tmp_path, case):
    ticks, res, off = FAR[case]
    cap = pcapng_with_ticks(tmp_path / "far.pcapng", ticks, res, off)
    out = tmp_path / "a.pcapng"
    r = demux("replay", str(cap), "-s", SCAN_TOML, "--summary", "--annotate", str(out))
    assert r.returncode == 0, r.stderr
    assert [f.ts_ns for f in frames(out)] == [f.ts_ns for f in frames(cap)]
    if shutil.which("tshark"):
        t = subprocess.run(["tshark", "-r", str(out), "-c", "3", "-T", "fields", "-e", "frame.comment"],
                           capture_output=True, text=True, timeout=60)
        assert t.returncode == 0 and t.stdout.count("demux:") == 3, t.stderr


def test_writers_say_what_they_cannot_hold(tmp_path):
    with PcapWriter(str(tmp_path / "a.pcap"), 1) as w:
        with pytest.raises(ValueError, match="1970 to 2106"):
            w.write(-10**6, b"x")
        with pytest.raises(ValueError, match="1970 to 2106"):
            w.write(2**32 * 10**9, b"x")
        w.write(2**32 * 10**9 - 1000, b"x")
    with PcapngWriter(str(tmp_path / "a.pcapng")) as w:
        for ns in (0, 2**64 - 1, 2**64, -1, -(2**62) * 10**9, 2**62 * 10**9 + 7):
            w.write(ns, b"\0" * 20)
        with pytest.raises(ValueError, match="signed 64-bit"):
            w.write(2**63 * 10**9, b"x")
    assert [f.ts_ns for f in frames(tmp_path / "a.pcapng")] == [
        0, 2**64 - 1, 2**64, -1, -(2**62) * 10**9, 2**62 * 10**9 + 7]
    # Plain timestamps need no if_tsoffset: one interface only.
    with PcapngWriter(str(tmp_path / "b.pcapng")) as w:
        w.write(1_700_000_000 * 10**9, b"x")
        w.write(0, b"x")
        assert len(w._ifaces) == 1


def test_a_pid_no_linux_has_is_refused_before_any_output(tmp_path):
    # Beyond PID_MAX_LIMIT the scenario is refused (one line, status 2), so the pcapng
    # process-id option (32 bits) never meets such a pid; no output file is started.
    sc = tmp_path / "bigpid.toml"
    sc.write_text(open(SCAN_TOML).read().replace("pid = 28369", "pid = 99999999999"))
    r = demux("replay", SCAN, "-s", str(sc), "--summary", "--annotate", str(tmp_path / "a.pcapng"))
    assert r.returncode == 2 and "pid must be within" in r.stderr.decode() and r.stderr.count(b"\n") == 1
    assert not (tmp_path / "a.pcapng").exists()


def test_annotate_to_stdout_is_refused(tmp_path):
    # Standard output carries the records: a pcapng there would be interleaved with them.
    r = demux("replay", SCAN, "-s", SCAN_TOML, "--annotate", "-")
    assert r.returncode == 2 and r.stdout == b"" and r.stderr.count(b"\n") == 1
    assert b"--annotate -" in r.stderr


def test_infer_and_import_ss_never_write_over_their_input(tmp_path):
    cap = tmp_path / "c.pcap"
    shutil.copy(SCAN, cap)
    before = cap.read_bytes()
    (tmp_path / "link.pcap").symlink_to(cap)
    for args in (("infer", str(cap), "-o", str(cap)), ("infer", str(tmp_path / "link.pcap"), "-o", str(cap))):
        r = demux(*args)
        assert r.returncode == 2 and b"would overwrite the input" in r.stderr and r.stderr.count(b"\n") == 1
    with open(cap, "rb") as fh:        # standard input redirected from the file itself
        r = subprocess.run([sys.executable, "-m", "demux", "infer", "-", "-o", str(cap)], stdin=fh,
                           capture_output=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert cap.read_bytes() == before
    listing = tmp_path / "ss.txt"
    listing.write_text("Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port\n"
                       "tcp LISTEN 0 5 0.0.0.0:80 0.0.0.0:*\n")
    r = demux("import-ss", str(listing), "-o", str(listing))
    assert r.returncode == 2 and listing.read_text().startswith("Netid")
    r = demux("infer", str(cap), "-o", str(tmp_path / "ok.toml"))
    assert r.returncode == 0 and (tmp_path / "ok.toml").read_text().startswith("# Inferred")
