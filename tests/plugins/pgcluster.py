"""A private PostgreSQL cluster from the machine's own server binaries (for TimescaleDB tests).

The shared server on 127.0.0.1:5432 may have TimescaleDB installed but not preloaded (the usual
state right after installing the package), and tests must never reconfigure or restart it. So
where the extension's files are installed next to a PostgreSQL server
(``/usr/lib/postgresql/<major>/lib/timescaledb.so`` and its ``.control`` file), the suite runs
``initdb`` into a temporary directory and starts a server of its own on a free loopback port
with ``shared_preload_libraries = 'timescaledb'``. PostgreSQL refuses to run as root, so when
the tests run as root the cluster belongs to, and runs as, the ``postgres`` OS user.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from gateway.dev.services import free_port

__all__ = ["PgInstall", "PrivateCluster", "find_timescaledb_install"]

_SERVER_ROOT = Path("/usr/lib/postgresql")
_SHARE_ROOT = Path("/usr/share/postgresql")


@dataclass(frozen=True, slots=True)
class PgInstall:
    """A PostgreSQL server installation: its ``bin`` directory and major version."""

    major: str
    bindir: Path

    def binary(self, name: str) -> str:
        return str(self.bindir / name)


def find_timescaledb_install() -> PgInstall | None:
    """The newest PostgreSQL install with TimescaleDB's library and control file, or None."""
    if not _SERVER_ROOT.is_dir():
        return None
    majors = sorted(
        (p.name for p in _SERVER_ROOT.iterdir() if p.name.isdigit()), key=int, reverse=True
    )
    for major in majors:
        bindir = _SERVER_ROOT / major / "bin"
        library = _SERVER_ROOT / major / "lib" / "timescaledb.so"
        control = _SHARE_ROOT / major / "extension" / "timescaledb.control"
        if (bindir / "initdb").exists() and library.exists() and control.exists():
            return PgInstall(major, bindir)
    return None


def _service_user() -> pwd.struct_passwd | None:
    """The OS user to run the server as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, and there is no 'postgres' OS user to run a private "
            "PostgreSQL cluster as"
        ) from None


_PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In the child: a fast shutdown when the test process dies (killed, timed out in CI), so
    no server outlives the run. Set after the switch to the ``postgres`` user, which clears it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT)


@dataclass
class PrivateCluster:
    """initdb + postgres on a free loopback port, removed again by :meth:`stop`."""

    install: PgInstall
    preload_timescaledb: bool = True
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gw-pg-")))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def _run_as(self) -> dict[str, object]:
        user = _service_user()
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60.0) -> None:
        data = self.directory / "data"
        user = _service_user()
        if user is not None:
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        subprocess.run(
            [
                self.install.binary("initdb"),
                "-D", str(data), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self._run_as(),  # type: ignore[arg-type]
        )  # fmt: skip
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{data}'",
            "max_connections": "200",
            # A throwaway cluster: durability buys nothing, speed does.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "timezone": "'UTC'",
        }
        if self.preload_timescaledb:
            settings |= {
                "shared_preload_libraries": "'timescaledb'",
                "timescaledb.telemetry_level": "off",
                "max_worker_processes": "32",
            }
        with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            [self.install.binary("postgres"), "-D", str(data)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_stop_with_parent,  # noqa: PLW1509 - prctl only, before exec
            **self._run_as(),  # type: ignore[arg-type]
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = self.log_file.read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"private PostgreSQL did not start:\n{tail}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: ends sessions
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)
