"""start_service.py helpers that run before any child process starts."""

import subprocess
import sys
from pathlib import Path

import pytest

resource = pytest.importorskip("resource")  # POSIX only, like the limit itself

ROOT = Path(__file__).resolve().parent.parent


def test_open_file_limit_is_raised_for_the_children() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard limit {hard} leaves nothing to raise")
    code = (
        "import resource, subprocess, sys, start_service\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "start_service.raise_open_file_limit(4096)\n"
        "child = 'import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])'\n"
        "print(subprocess.check_output([sys.executable, '-c', child], text=True).strip())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    expected = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    assert int(out.stdout) == expected
