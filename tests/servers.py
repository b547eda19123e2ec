"""Servers the tests start on loopback: a free port, and JupyterLab (the PostgreSQL one is in postgres.py)."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    root: Path

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def api(self, path: str) -> object:
        body = self.get(path)
        return json.loads(body) if body else None


@contextmanager
def jupyterlab(argv: list[str], env: dict[str, str], root: Path, log: Path, *options: str) -> Iterator[Lab]:
    """Run `argv` (a JupyterLab command line, as coursegrader.lab builds it) on a free loopback port with a
    random token, until its API answers; stop it afterwards. Its output goes to `log`."""
    port, token = free_port(), secrets.token_hex(16)
    with log.open("w") as out:
        server = subprocess.Popen(
            [*argv, "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", *options],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        lab = Lab(f"http://127.0.0.1:{port}", token, root)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    lab.api("/api/status")
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"JupyterLab did not start; the end of {log}:\n{log.read_text()[-2000:]}")
                    time.sleep(0.5)
            yield lab
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
