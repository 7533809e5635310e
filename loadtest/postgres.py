"""A real PostgreSQL server for the tests and benchmarks: a fresh cluster in a
temporary folder, on a free port of 127.0.0.1, stopped (and removed) at the end.

PostgreSQL refuses to run as root: run as root (as ``make test`` and CI do), the
cluster belongs to an unprivileged user (``postgres`` from Debian's package, or
``voiceforge-pg``, created here when neither exists) and every server command runs as
that user through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_USERS = ("postgres", "voiceforge-pg")
COMMAND_TIMEOUT_S = 60


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian keeps them off PATH), or None."""
    found = shutil.which("pg_ctl")
    if found is not None and shutil.which("initdb") is not None:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


def _server_user() -> str | None:
    """Who runs the server: None for the current user when that is not root."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         SERVER_USERS[-1]],
        check=True, capture_output=True, timeout=COMMAND_TIMEOUT_S,
    )
    return SERVER_USERS[-1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    bin_dir: Path
    data: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://voiceforge@127.0.0.1:{self.port}/voiceforge"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr or result.stdout}")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.data} -c fsync=off")
        self._run("pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data / "db"),
                  "-l", str(self.data / "server.log"), "-o", options)

    def create_database(self, name: str) -> str:
        """A new empty database on this server; its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "voiceforge", name)
        return f"postgresql://voiceforge@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "fast", "-D", str(self.data / "db"))


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running cluster with a database ``voiceforge`` (trust auth on 127.0.0.1)."""
    bin_dir = binaries()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    user = _server_user()
    data = Path(tempfile.mkdtemp(prefix="voiceforge-pg-"))
    try:
        if user is not None:
            shutil.chown(data, user)
        server = PostgresServer(bin_dir, data, _free_port(), user)
        server._run("initdb", "-D", str(data / "db"), "-U", "voiceforge", "--auth=trust",
                    "-E", "UTF8", "--no-sync")
        server.start()
        try:
            server.create_database("voiceforge")
            yield server
        finally:
            with contextlib.suppress(RuntimeError):
                server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
