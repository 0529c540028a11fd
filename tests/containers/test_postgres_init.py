"""docker/postgres/init-databases.sql, run the way the postgres image runs it (psql as the superuser) on a
throwaway PostgreSQL cluster of its own: the shared server of these machines must not get the stack's roles.

The cluster uses password authentication over TCP, so the tests show what a password opens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Generator, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg2
import pytest
from containers_support import REPO_ROOT, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

INIT_SQL = REPO_ROOT / "docker" / "postgres" / "init-databases.sql"
SUPERUSER_PASSWORD = "init-test-superuser-pw"
PASSWORDS = {
    "AIRFLOW_DB_PASSWORD": "init-test-airflow-pw",
    "BATCH_DB_PASSWORD": "init-test-batch-pw",
    "ALERTING_DB_PASSWORD": "init-test-alerting-pw",
}


def postgres_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    if shutil.which(name):
        return shutil.which(name)
    pytest.fail(f"{name} not found: the PostgreSQL server package is needed (the suite uses it anyway)")


def as_cluster_owner(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; the postgres account owns the throwaway cluster then.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def throwaway_cluster() -> Generator[int]:
    """A PostgreSQL cluster in a temporary directory, password authentication only; yields its TCP port."""
    directory = Path(tempfile.mkdtemp(prefix="pg-init-test-"))
    data, pwfile = directory / "data", directory / "pwfile"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_port()
    subprocess.run(
        as_cluster_owner(
            [
                postgres_bin("initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
    pg_ctl = postgres_bin("pg_ctl")
    subprocess.run(
        as_cluster_owner(
            [pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(directory / "log"), "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield port
    finally:
        subprocess.run(
            as_cluster_owner([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(directory, ignore_errors=True)


def run_init_sql(port: int, passwords: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-X",
            "-f",
            str(INIT_SQL),
        ],
        env={"PATH": os.environ["PATH"], "PGPASSWORD": SUPERUSER_PASSWORD, **passwords},
        capture_output=True,
        text=True,
    )


def connect(port: int, user: str, password: str, database: str):
    return closing(
        psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password, dbname=database)
    )


@pytest.fixture(scope="module")
def initialised() -> Iterator[int]:
    with throwaway_cluster() as port:
        result = run_init_sql(port, PASSWORDS)
        assert result.returncode == 0, result.stderr
        yield port


@pytest.fixture
def fresh_cluster() -> Iterator[int]:
    with throwaway_cluster() as port:
        yield port


@pytest.mark.parametrize(
    ("user", "variable", "database"),
    [
        ("airflow", "AIRFLOW_DB_PASSWORD", "airflow"),
        ("batch_job", "BATCH_DB_PASSWORD", "transactions"),
        ("alerting", "ALERTING_DB_PASSWORD", "alerts"),
    ],
)
def test_each_owner_reaches_its_database_with_its_password(initialised, user, variable, database):
    with (
        connect(initialised, user, PASSWORDS[variable], database) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute("CREATE TABLE owned_here (id int)")
        cursor.execute("SELECT current_user, current_database()")
        assert cursor.fetchone() == (user, database)


def test_an_owner_cannot_connect_to_another_database(initialised):
    with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
        connect(initialised, "batch_job", PASSWORDS["BATCH_DB_PASSWORD"], "airflow").__enter__()


def test_a_wrong_password_is_refused(initialised):
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(initialised, "batch_job", "not-the-password", "transactions").__enter__()


def roles(port: int) -> list[str]:
    with (
        connect(port, "postgres", SUPERUSER_PASSWORD, "postgres") as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT rolname FROM pg_roles WHERE rolname IN ('airflow', 'batch_job', 'alerting')")
        return [name for (name,) in cursor.fetchall()]


def test_a_missing_password_fails_the_script_before_any_role_exists(fresh_cluster):
    partial = {name: value for name, value in PASSWORDS.items() if name != "BATCH_DB_PASSWORD"}

    result = run_init_sql(fresh_cluster, partial)

    assert result.returncode != 0
    assert "batch_job_password" in result.stderr
    assert not [value for value in PASSWORDS.values() if value in result.stdout + result.stderr]
    assert roles(fresh_cluster) == []


def test_an_empty_password_fails_the_script_before_any_role_exists(fresh_cluster):
    result = run_init_sql(fresh_cluster, {**PASSWORDS, "ALERTING_DB_PASSWORD": ""})

    assert result.returncode != 0
    assert not [value for value in PASSWORDS.values() if value in result.stdout + result.stderr]
    assert roles(fresh_cluster) == []


def test_the_script_prints_no_password(fresh_cluster):
    result = run_init_sql(fresh_cluster, PASSWORDS)

    assert result.returncode == 0, result.stderr
    assert not [value for value in PASSWORDS.values() if value in result.stdout + result.stderr]
