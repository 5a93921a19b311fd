"""Errors that reach the user as one line and an exit status, never a traceback."""


class DemuxError(Exception):
    """Bad input: the message names the input and the problem; ``status`` is the exit code."""

    status = 2

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class ScenarioError(DemuxError):
    """A scenario file that cannot be read (SPEC §1): exit status 2."""


class CaptureError(DemuxError):
    """A capture that cannot be read at all (missing, not a capture, bad link type)."""
