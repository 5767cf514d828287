"""The app as a server for scripts and tests: `python app.py` on a free loopback port, and Chromium's flags.

    with serve_app(home) as url:        # "http://127.0.0.1:PORT/", stopped on leaving the block
        ...

Tests import it too (pyproject's pytest `pythonpath` includes scripts/).
"""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Headless Chromium in a container, with nothing phoning home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(home: Path, timeout: float = 120.0) -> Iterator[str]:
    """Run `python app.py --home HOME` on a free port until the block ends; yields its URL once it accepts
    connections. Raises RuntimeError with the app's output if it exits or is not up within `timeout` s."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port), "--home", str(home)],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.time() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"the app did not come up on port {port}:\n{log.read()}") from None
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/"
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
