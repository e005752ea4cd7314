"""A rotel collector receiving OTLP/HTTP into its blackhole exporter: the Rust reference the serve and collector
benchmarks measure costspan against. ``rotel`` is the PyPI package that ships the ``rotel-agent`` binary."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def rotel_blackhole() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A running rotel and its OTLP/HTTP port, once it accepts connections (within 30 s)."""
    import rotel

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")},
        "ROTEL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{port}",
        "ROTEL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
        "ROTEL_EXPORTER": "blackhole",
    }
    binary = Path(rotel.__file__).parent / "rotel-agent"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([binary, "start"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield process, port
        finally:
            process.terminate()
            process.wait(timeout=30)
