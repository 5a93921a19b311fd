"""The batch replay engine (SPEC §3 at capture scale): the same record for every packet as
``demux.engine``, from numba-compiled passes over the capture's bytes.

``replay_batch`` is what ``demux replay --engine batch`` calls; ``usable`` says whether
a replay can take the batch path (jsonl or summary output of a capture file). numba is
imported only when a replay runs, never when this package is imported.
"""

from __future__ import annotations

import os


# Below this size ``--engine auto`` keeps the reference engine: loading the compiled
# numba code (about half a second) costs more than it saves.
AUTO_MIN_BYTES = 32 << 20


def usable(args, auto: bool = False) -> bool:
    """Can ``demux replay`` with these arguments run on the batch engine (a capture file;
    jsonl or the summary on standard output, with or without --split/--annotate)? With
    ``auto``, also: is the capture big enough for it to pay?"""
    if args.capture == "-" or not os.path.isfile(args.capture):
        return False
    if not (args.summary or args.format == "jsonl"):
        return False
    return not auto or os.path.getsize(args.capture) >= AUTO_MIN_BYTES


def replay_batch(capture_path: str, scenario, seed: int = 0, workers: int = 1, jsonl_out=None, sinks=(),
                 **tuning):
    """Replay ``capture_path``; jsonl lines go to the binary stream ``jsonl_out`` (None:
    count only). Returns (Summary, warning or None, notes), as the reference loop ends
    with (notes: ``Engine.finish``'s lines). ``sinks``: the --split/--annotate sinks of
    demux.render.split, each written every frame's Record in capture order (closed by the
    caller). ``tuning``: flow_capacity, chunk, read_size (tests make them tiny)."""
    from demux.batch.engine import BatchEngine
    eng = BatchEngine(scenario, seed, jsonl_out=jsonl_out, workers=workers, sinks=sinks, **tuning)
    return eng.run(capture_path)


def reference_jsonl(capture_path: str, scenario, seed: int = 0, out=None):
    """The reference engine's jsonl bytes and Summary, for comparisons and benchmarks."""
    import json

    from demux.capture import open_capture
    from demux.engine import Engine
    from demux.render.summary import Summary
    enc = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False).encode
    summ = Summary(scenario)
    eng = Engine(scenario, seed)
    with open_capture(capture_path) as reader:
        for frame in reader:
            rec = eng.feed(frame)
            summ.add(rec)
            if out is not None:
                out.write((rec.jsonl(enc) + "\n").encode())
        return summ, reader.warning, eng.finish()
