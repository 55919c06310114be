"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package, run with ``initdb`` and
``pg_ctl`` in a temporary directory as an unprivileged user (``postgres`` when the tests run as
root), listening on a Unix socket only. Each test gets a database of its own."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")


def bindir() -> Path | None:
    """The newest installed server's programs (Debian keeps them out of PATH)."""
    found = sorted(PG_ROOT.glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _as_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the ``postgres`` account the package made."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[-1] if cmd else cmd} failed ({done.returncode}): {done.stderr or done.stdout}")


class PostgresServer:
    def __init__(self, root: Path) -> None:
        programs = bindir()
        if programs is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
        self.bin, self.root = programs, root
        self.data, self.socket = root / "data", root / "socket"
        self.port = 5432

    def start(self) -> None:
        self.socket.mkdir(parents=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            for path in (self.root, self.socket):
                os.chown(path, pg.pw_uid, pg.pw_gid)
        _run(_as_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", "chatlm",
                       "--auth=trust", "-E", "UTF8", "--no-sync"]))
        options = f"-k {self.socket} -c listen_addresses='' -p {self.port} -c fsync=off"
        _run(_as_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                       "-l", str(self.root / "server.log"), "-w", "start"]))

    def stop(self) -> None:
        subprocess.run(_as_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"]),
                       capture_output=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://chatlm@/{database}?host={self.socket}&port={self.port}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host=str(self.socket), port=self.port, user="chatlm", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def running() -> Iterator[PostgresServer]:
    """A server in a fresh folder directly under the temporary directory (pytest's own folders are
    private to the user running the tests, which the server's account could not enter)."""
    root = Path(tempfile.mkdtemp(prefix="chatlm-pg-"))
    server = PostgresServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
