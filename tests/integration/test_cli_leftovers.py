"""Leftovers of the last audit at the CLI: stores and files that cannot be used, messages that
name their real source, the eval's missing extra, vote's progress, and ``--help``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import one_line_error
from tests.conftest import run_moa as run

PG = "postgresql://127.0.0.1:5432/test"


def _postgres_up() -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 5432)) == 0


def test_an_unopenable_sqlite_store_is_one_line_naming_it(tmp_path: Path) -> None:
    one_line_error(
        run("threads", "--db", str(tmp_path)),
        f"cannot use the thread store {str(tmp_path)!r}: it is a folder, not a file",
    )
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    for db in (a_file / "x.sqlite", a_file / "deeper" / "x.sqlite"):
        one_line_error(
            run("history", "--thread", "t", "--db", str(db)),
            f"cannot create the thread store {str(db)!r}: {str(a_file)!r} is not a folder",
        )


def test_a_store_in_a_read_only_folder_is_one_line_naming_it(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes through permissions; sysfs refuses even root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without /sys")
        db = Path("/sys/x.sqlite")
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        db = folder / "x.sqlite"
    one_line_error(run("threads", "--db", str(db)), f"cannot open the thread store {str(db)!r}")
    assert not db.exists()


@pytest.mark.skipif(not _postgres_up(), reason="no PostgreSQL on 127.0.0.1:5432")
def test_a_postgres_store_that_cannot_connect_is_one_line_without_its_password() -> None:
    wrong_port = "postgresql://moa:s3cret-pw@127.0.0.1:1/test"
    result = run("threads", "--db", wrong_port)
    one_line_error(
        result, "cannot use the PostgreSQL thread store 'postgresql://moa:***@127.0.0.1:1/test'"
    )
    assert "s3cret-pw" not in result.stderr
    one_line_error(
        run("history", "--thread", "t", "--db", PG + "-no-such-database"),
        f"cannot use the PostgreSQL thread store '{PG}-no-such-database': ",
    )
