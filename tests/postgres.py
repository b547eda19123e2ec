"""A throw-away PostgreSQL server on loopback for the tests, from Debian's `postgresql` package.

No system service is touched: a fresh cluster is made in a temporary folder, started on a free port
(as the `postgres` user when the tests run as root, since PostgreSQL refuses to run as root), and
removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servers import free_port


def bindir() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian: /usr/lib/postgresql/<major>/bin), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@contextmanager
def server(database: str = "gradebook") -> Iterator[str]:
    """Start a server with an empty `database`; yield its SQLAlchemy URL (user `grader`, no password)."""
    bins = bindir()
    if bins is None:
        raise RuntimeError("PostgreSQL is not installed (Debian package: postgresql)")
    as_user = {}
    folder = Path(tempfile.mkdtemp(prefix="coursegrader-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        as_user = {"user": account.pw_uid, "group": account.pw_gid}
        os.chown(folder, account.pw_uid, account.pw_gid)
    data, sockets = folder / "data", folder / "sockets"
    port = free_port()
    process = None
    try:
        subprocess.run([bins / "initdb", "-D", data, "-U", "grader", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, **as_user)
        subprocess.run(["mkdir", sockets], check=True, **as_user)
        process = subprocess.Popen([bins / "postgres", "-D", data, "-k", sockets, "-h", "127.0.0.1", "-p", str(port),
                                    "-c", "fsync=off", "-c", "max_connections=50"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user)
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(f"postgresql://grader@127.0.0.1:{port}/postgres", autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{database}"')
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start (exit code {process.poll()})") from None
                time.sleep(0.2)
        yield f"postgresql+psycopg://grader@127.0.0.1:{port}/{database}"
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
