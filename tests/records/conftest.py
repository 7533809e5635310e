"""Both record stores: a SQLite file per test, and a real PostgreSQL server per
module (a fresh database per test)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.postgres import PostgresServer, binaries, postgres_server

_databases = itertools.count(1)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if binaries() is None:
        pytest.skip("PostgreSQL's server (initdb, pg_ctl) is not installed; "
                    "make test installs Debian's postgresql package")
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calls.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"calls_{next(_databases)}")
