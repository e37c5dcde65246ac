import sys
from pathlib import Path

# tests/harness.py and friends are imported as plain modules by the suites.
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
from harness import PgStore, SqliteStore, Store  # noqa: E402


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL for the whole session, started on first use only."""
    import pg

    server = pg.start_server()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def new_store(request, store_kind, tmp_path):
    """``new_store(directory=None) -> Store``: a fresh, empty store of this test's kind
    (a SQLite file, or a new PostgreSQL database), disposed of after the test."""
    server = request.getfixturevalue("pg_server") if store_kind == "postgres" else None
    made: list[Store] = []

    def make(directory=None) -> Store:
        if server is None:
            d = directory or tmp_path
            d.mkdir(parents=True, exist_ok=True)
            made.append(SqliteStore(d / "j.db"))
        else:
            made.append(PgStore.fresh(server))
        return made[-1]

    yield make
    for s in made:
        s.dispose()


@pytest.fixture
def store(new_store) -> Store:
    """This test's store: every ``store.journal()`` opens the same data."""
    return new_store()


@pytest.fixture
async def two(store):
    """Two instances on one store: two journals opened on the same data."""
    a, b = store.journal(), store.journal()
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


FUZZ_REPORT = pytest.StashKey[dict]()


@pytest.fixture
def fuzz_report(request) -> dict:
    """Where the schemathesis run (tests/e2e/test_fuzz_openapi.py) leaves its numbers
    for the run's summary."""
    return request.config.stash.setdefault(FUZZ_REPORT, {})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    report = config.stash.get(FUZZ_REPORT, None)
    if not report:
        return
    terminalreporter.section("schemathesis fuzz run")
    terminalreporter.write_line(f"schemathesis {report['schemathesis']}, seed {report['seed']}: "
                                f"{report['total']} cases in {report['seconds']} s")
    for operation, n in report["cases_per_operation"].items():
        terminalreporter.write_line(f"  {n:5d}  {operation}")
