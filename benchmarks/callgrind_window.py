"""Counting a process's instructions under callgrind in a window: only while it does the work measured.

Python's start-up and the imports (the SDKs, pydantic models) cost far more than a hundred calls, and under full
instrumentation they take minutes on a busy machine. So the child runs uninstrumented until it is ready (valgrind's
core alone is several times faster), the parent turns callgrind's instrumentation on with ``callgrind_control``
for the work and off after it, and the total callgrind prints is the window's. The handshake itself (a line each
way) costs the same in every variant, ~25 k instructions, so differences between variants cancel it.

Both sides are here: ``instructions`` in the benchmark, ``counted`` in the child it starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import IO


def _expect(stream: IO[str], word: str, process: subprocess.Popen[str]) -> None:
    line = stream.readline().strip()
    if line != word:
        process.kill()
        _, err = process.communicate()
        raise RuntimeError(f"the child said {line!r}, not {word!r}:\n{err[-2000:]}")


def _instrumentation(on: bool, pid: int) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)], capture_output=True, check=True)


def instructions(cmd: list[str]) -> int:
    """The instructions ``cmd`` runs between its ``counted`` window's start and end (it must call ``counted``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        process = subprocess.Popen(
            valgrind + cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert process.stdin is not None and process.stdout is not None
        _expect(process.stdout, "ready", process)
        _instrumentation(True, process.pid)
        process.stdin.write("go\n")
        process.stdin.flush()
        _expect(process.stdout, "done", process)
        _instrumentation(False, process.pid)
        _, err = process.communicate("exit\n")
        match = re.search(r"Collected : (\d+)", err)
        if process.returncode != 0 or match is None:
            raise RuntimeError(f"callgrind printed no total (exit {process.returncode}):\n{err[-2000:]}")
        return int(match.group(1))


def counted(work: Callable[[], None]) -> None:
    """Run ``work`` inside the window ``instructions`` counts."""
    print("ready", flush=True)
    sys.stdin.readline()
    work()
    print("done", flush=True)
    sys.stdin.readline()
