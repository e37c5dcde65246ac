"""A throwaway PostgreSQL server for tests and benchmarks: ``initdb`` and ``pg_ctl`` on a
temporary directory, reachable only through a unix socket in that directory.

PostgreSQL refuses to run as root, so as root the directories are handed to the
``postgres`` user and every server binary runs through ``runuser -u postgres``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.errors import PgServerError

__all__ = ["PgServer", "PgServerError", "database_of", "find_bindir", "running", "schema_of"]

_BINDIRS = ("/usr/lib/postgresql/15/bin",)
_USER = "postgres"


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates = [os.environ["PG_BINDIR"]] if os.environ.get("PG_BINDIR") else list(_BINDIRS)
    for d in candidates:
        if all((Path(d) / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(d)
    raise PgServerError(f"PostgreSQL 15 binaries not found in {', '.join(candidates)} (set PG_BINDIR)")


class PgServer:
    """One server. ``start()`` then ``url(db)``; ``stop()`` kills it and deletes its files."""

    def __init__(self, *, bindir: Path | None = None, fsync: bool = True, base: str | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.fsync = fsync
        self.base = Path(tempfile.mkdtemp(prefix="pg-", dir=base))
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log = self.base / "server.log"
        self._as_root = os.geteuid() == 0
        self._started = False
        self._names = itertools.count(1)
        self._databases: set[str] = set()
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._prepare_dirs()
            self._run("initdb", "-D", str(self.data), "-U", _USER, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    "\n# throwaway server: unix socket only\n"
                    "listen_addresses = ''\n"
                    f"unix_socket_directories = '{self.socket_dir}'\n"
                    "max_connections = 200\n"
                    "shared_buffers = 64MB\n"
                    f"fsync = {'on' if self.fsync else 'off'}\n"
                    "synchronous_commit = on\n"
                    "full_page_writes = on\n"
                    "log_min_messages = warning\n"
                )
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
            self._started = True
            self._watchdog = self._start_watchdog()
        except (OSError, subprocess.SubprocessError, PgServerError) as exc:
            detail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            self.stop()
            raise PgServerError(f"cannot start PostgreSQL: {exc}\n{detail}") from exc

    def stop(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.poll() is None:
            watchdog.kill()
            watchdog.wait()
        if self._started:
            self._started = False
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
            except (OSError, subprocess.SubprocessError, PgServerError):
                pass
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases ----------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_USER}@/{database}?host={self.socket_dir}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def create_schema(self, prefix: str = "s", database: str = "scratch") -> str:
        """A new empty schema (in ``database``, made on first use), and a URL whose
        connections find their tables there first: a store much cheaper than a database."""
        if database not in self._databases:
            if not self.execute("SELECT 1 FROM pg_database WHERE datname = $1", database):
                self.execute(f'CREATE DATABASE "{database}" TEMPLATE template0')
            self._databases.add(database)
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE SCHEMA "{name}"', database=database)
        # asyncpg sends unknown URL parameters as server settings.
        return f"{self.url(database)}&search_path={name}"

    def drop(self, url: str) -> None:
        """Drop what ``create_database`` or ``create_schema`` made."""
        database, schema = database_of(url), schema_of(url)
        if schema is not None:
            self.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', database=database)
        else:
            self.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    def execute(self, sql: str, *args: Any, database: str = "postgres",
                url: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement (on ``database``, or through ``url``) from synchronous code,
        even inside a running event loop: it gets a thread and a loop of its own."""
        return _in_thread(self._execute(sql, args, url or self.url(database)))

    async def _execute(self, sql: str, args: tuple[Any, ...], url: str) -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    # -- plumbing -----------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        self.socket_dir.mkdir()
        if self._as_root:
            pw = pwd.getpwnam(_USER)
            for d in (self.base, self.socket_dir):
                os.chown(d, pw.pw_uid, pw.pw_gid)

    def _start_watchdog(self) -> subprocess.Popen[bytes]:
        """pg_ctl detaches the server from us: should this process die without calling
        ``stop()`` (kill -9, a CI timeout), a watchdog stops the server and deletes its
        files within a second instead of leaving them behind."""
        stop = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        if self._as_root:
            stop = ["runuser", "-u", _USER, "--", *stop]
        script = (f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
                  f"{shlex.join(stop)} >/dev/null 2>&1; rm -rf {shlex.quote(str(self.base))}")
        return subprocess.Popen(["sh", "-c", script], start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _run(self, binary: str, *args: str) -> None:
        cmd = [str(self.bindir / binary), *args]
        if self._as_root:
            cmd = ["runuser", "-u", _USER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.base)
        if proc.returncode != 0:
            raise PgServerError(f"{binary} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")


def database_of(url: str) -> str:
    """``postgresql://user@/name?host=...`` -> ``name``."""
    return url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]


def schema_of(url: str) -> str | None:
    """The ``search_path`` a ``create_schema`` URL names, if any."""
    for part in url.partition("?")[2].split("&"):
        key, _, value = part.partition("=")
        if key == "search_path":
            return value
    return None


def _in_thread(coro: Any) -> Any:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=run, name="pgserver-sql")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@contextmanager
def running(**kwargs: Any) -> Iterator[PgServer]:
    """``with running() as server:`` a started server, stopped and deleted on exit."""
    server = PgServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
