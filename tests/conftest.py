"""Shared pytest fixtures.

`netns_available`: tests that need root and network namespaces (and tcpdump, for the
capture tests) take this fixture. Where those are missing it skips with the reason, or
fails instead when DEMUX_REQUIRE_NETNS=1 (CI sets it, so a broken runner is not green).
"""

import os
import shutil
import subprocess

import pytest


@pytest.fixture(scope="session")
def netns_available():
    def missing(reason):
        if os.environ.get("DEMUX_REQUIRE_NETNS") == "1":
            pytest.fail(f"DEMUX_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)

    if os.geteuid() != 0:
        missing("network namespaces need root")
    for tool in ("ip", "tcpdump"):
        if not shutil.which(tool):
            missing(f"{tool} is not installed")
    probe = f"dmx-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        missing(f"`ip netns add` failed: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True
