"""Output files that never harm an input (SPEC Errors: "Nothing the user gave is modified").

``OutputSet`` hands out the files ``--split`` and ``--annotate`` write. Each is written
to a temporary file in its destination's directory (``.NAME.XXXXXX.tmp``) and renamed
into place by ``commit()`` only when the replay has finished, so:

- an output that is the capture being read is never truncated while it is read, and a
  replay that fails (bad input, Ctrl-C, a broken pipe) leaves no half-written file and
  leaves any file already at the destination as it was: ``discard()`` removes the
  temporaries;
- an output that is one of the inputs (the capture, through any path, symlink or hard
  link, or standard input redirected from it; the scenario file) is refused up front
  with one line, as is one file asked for twice. Inputs are told apart by
  (st_dev, st_ino), the identity the kernel itself uses.

A symlinked destination is written through (its target is replaced, the link kept), as
shell redirection would. A destination that exists and is not a regular file
(``/dev/null``, a FIFO) is opened and written directly: renaming over it would replace
the device node or the pipe instead of writing to it. ``-`` is standard output.
Directories made for outputs (``--split DIR``) are removed again by ``discard()`` if
the run fails and they are still empty.
New files get the mode ``open()`` would give them (0666 less the umask); a replaced
file keeps its permission bits.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile

from demux.errors import DemuxError

__all__ = ["OutputSet", "silence_stdout"]


def silence_stdout() -> None:
    """Point stdout at /dev/null, so what is still buffered for it (a reader such as
    `head` went away) goes nowhere quietly, as Unix tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

_BUFSIZE = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Out:
    """One destination: the file object to write, and how to put it in place."""

    __slots__ = ("path", "real", "tmp", "file")

    def __init__(self, path, real, tmp, file):
        self.path, self.real, self.tmp, self.file = path, real, tmp, file


class OutputSet:
    """The output files of one run, committed together or discarded together."""

    def __init__(self):
        self._inputs: dict[tuple[int, int], str] = {}
        self._outs: list[_Out] = []
        self._reserved: dict[str, str] = {}     # real path -> the option that asked for it
        self._made_dirs: list[str] = []

    # --- inputs ---------------------------------------------------------------------

    def protect(self, path: str | None = None, fd: int | None = None, *, what: str) -> None:
        """Remember an input (a path, or an open descriptor such as stdin) that no output
        may overwrite; ``what`` names it in the refusal ("the capture being read")."""
        try:
            st = os.fstat(fd) if fd is not None else os.stat(path)
        except (OSError, ValueError):
            return              # not there: the reader will say so in its own words
        if stat.S_ISREG(st.st_mode):
            self._inputs[(st.st_dev, st.st_ino)] = what

    def _input_at(self, path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return self._inputs.get((st.st_dev, st.st_ino))

    # --- outputs --------------------------------------------------------------------

    def makedirs(self, directory: str) -> None:
        """Create ``directory`` (and its parents) if missing; ``discard()`` removes
        those it created, if still empty, so a failed run leaves no trace."""
        missing = []
        d = os.path.abspath(directory)
        while not os.path.exists(d):
            missing.append(d)
            d = os.path.dirname(d)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as err:
            raise DemuxError(f"{directory}: cannot create: {err.strerror}") from None
        self._made_dirs.extend(missing)

    def reserve(self, path: str, option: str) -> str:
        """Check that ``path`` may be written by ``option`` (``--annotate``): it is no
        input and not another output. Returns the real path it will be written at."""
        if path == "-":
            return path
        other_one = "directory" if option == "--split" else "file"
        what = self._input_at(path)
        if what is not None:
            raise DemuxError(f"{path}: {option} would overwrite {what}; choose another {other_one}")
        real = os.path.realpath(path)
        other = self._reserved.get(real)
        if other is not None and other != option:
            raise DemuxError(f"{path}: written by both {other} and {option}; "
                             f"choose another {other_one}")
        self._reserved[real] = option
        return real

    def open(self, path: str, option: str):
        """A binary file object for ``path``: a temporary beside it, renamed over it by
        ``commit()``; standard output for ``-``."""
        if path == "-":
            return sys.stdout.buffer
        real = self.reserve(path, option)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            st = None
        except OSError as err:
            raise DemuxError(f"{path}: cannot write: {err.strerror}") from None
        try:
            if st is not None and not stat.S_ISREG(st.st_mode):
                f = open(real, "wb", buffering=_BUFSIZE)
                tmp = None
            else:
                directory, base = os.path.split(real)
                fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory or ".")
                try:
                    os.fchmod(fd, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
                    f = os.fdopen(fd, "wb", buffering=_BUFSIZE)
                except BaseException:
                    os.close(fd)
                    os.unlink(tmp)
                    raise
        except OSError as err:
            raise DemuxError(f"{path}: cannot write: {err.strerror}") from None
        self._outs.append(_Out(path, real, tmp, f))
        return f

    def commit(self) -> None:
        """Flush every output and rename each into place."""
        outs, self._outs = self._outs, []
        self._made_dirs = []        # they hold the outputs now
        try:
            while outs:
                o = outs[0]
                try:
                    o.file.close()
                    if o.tmp is not None:
                        # Checked again: an input may have appeared at the path since.
                        what = self._input_at(o.real)
                        if what is not None:
                            raise DemuxError(f"{o.path}: would overwrite {what}; not written")
                        os.replace(o.tmp, o.real)
                except OSError as err:
                    raise DemuxError(f"{o.path}: cannot write: {err.strerror}") from None
                outs.pop(0)
        finally:
            self._outs = outs
            self.discard()

    def discard(self) -> None:
        """Drop every output not yet committed, leaving the destinations untouched."""
        outs, self._outs = self._outs, []
        for o in outs:
            try:
                o.file.close()
            except OSError:
                pass
            if o.tmp is not None:
                try:
                    os.unlink(o.tmp)
                except OSError:
                    pass
        dirs, self._made_dirs = self._made_dirs, []
        for d in dirs:          # deepest first, as makedirs listed them
            try:
                os.rmdir(d)
            except OSError:
                pass

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # Whatever ended the run early (bad input, Ctrl-C, a broken pipe) leaves no trace.
        self.discard()
