"""The suites' PostgreSQL: one throwaway server per session (initdb + pg_ctl on a temp
dir, unix socket only; see ``orchestrator.journal.pgserver``) and one fresh database per
store. When the server cannot start the PostgreSQL tests fail, never skip: a machine
without PostgreSQL must not pass for one that tested it."""

from __future__ import annotations

import pytest

from orchestrator.journal.pgserver import PgServer, PgServerError

__all__ = ["start_server"]


def start_server() -> PgServer:
    try:
        server = PgServer()
        server.start()
    except PgServerError as exc:
        pytest.fail(f"the PostgreSQL tests need a server and none could start: {exc}", pytrace=False)
    return server
