"""Export files end with something written last (the CSV trailer, the Parquet footer): a file
cut anywhere is told apart from a whole one."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gateway.billing.errors import IncompleteFileError
from gateway.billing.formats import EXPORT_SCHEMA, ExportRow, FileFormat, encoder
from gateway.billing.verify import check_csv, check_file, check_parquet

OPEN = datetime(2026, 10, 31, 22, tzinfo=UTC)
CLOSE = datetime(2026, 11, 30, 22, tzinfo=UTC)


def _row(i: int) -> ExportRow:
    return ExportRow(
        period="2026-11",
        meter_id=f"M{i:03d}",
        utility="electricity",
        register="1.8.0",
        unit="kWh",
        time_zone="Africa/Johannesburg",
        opening_at=OPEN,
        opening_read=Decimal(i),
        opening_method="actual",
        opening_estimate=None,
        closing_at=CLOSE,
        closing_read=Decimal(i + 100),
        closing_method="actual",
        closing_estimate=None,
        consumption=Decimal(100),
        flags='a "quoted", field' if i == 3 else "",
    )


def _file(file_format: FileFormat, rows: int, batch: int = 4) -> list[bytes]:
    """The file as its chunks, as they would be streamed."""
    enc = encoder(EXPORT_SCHEMA, file_format)
    chunks = [
        enc.encode([_row(i) for i in range(s, min(s + batch, rows))]) for s in range(0, rows, batch)
    ]
    return [*chunks, enc.finish()]


def test_csv_trailer_states_rows_and_the_hash_of_what_precedes_it() -> None:
    data = b"".join(_file("csv", 10))
    body, _, trailer = data.rstrip(b"\r\n").rpartition(b"\r\n")
    body += b"\r\n"
    assert trailer == f"# end rows=10 sha256={hashlib.sha256(body).hexdigest()}".encode()
    assert data.endswith(b"\r\n")
    assert check_csv(io.BytesIO(data)).rows == 10


def test_an_empty_csv_export_has_a_trailer_too() -> None:
    data = b"".join(_file("csv", 0))
    header = (",".join(EXPORT_SCHEMA.names) + "\r\n").encode()
    assert data == header + f"# end rows=0 sha256={hashlib.sha256(header).hexdigest()}\r\n".encode()
    assert check_csv(io.BytesIO(data)).rows == 0


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_every_cut_of_a_file_is_incomplete(file_format: FileFormat) -> None:
    chunks = _file(file_format, 10)
    data = b"".join(chunks)
    check = check_csv if file_format == "csv" else check_parquet
    assert check(io.BytesIO(data)).rows == 10
    for size in range(len(data)):
        with pytest.raises(IncompleteFileError):
            check(io.BytesIO(data[:size]))


def test_a_parquet_file_cut_between_row_groups_has_no_footer() -> None:
    chunks = _file("parquet", 10)
    assert len(chunks) == 4 and all(chunks)  # three row groups, then the footer
    for end in range(1, len(chunks)):
        with pytest.raises(pa.ArrowInvalid, match="magic bytes"):
            pq.ParquetFile(io.BytesIO(b"".join(chunks[:end])))


def test_a_changed_csv_byte_or_a_dropped_line_is_found() -> None:
    data = b"".join(_file("csv", 10))
    changed = data.replace(b"M004,", b"M00X,")
    with pytest.raises(IncompleteFileError, match="SHA-256"):
        check_csv(io.BytesIO(changed))
    lines = data.split(b"\r\n")
    del lines[5]
    with pytest.raises(IncompleteFileError):
        check_csv(io.BytesIO(b"\r\n".join(lines)))


def test_verify_command(tmp_path: Path) -> None:
    whole = tmp_path / "billing-2026-11.csv"
    whole.write_bytes(b"".join(_file("csv", 10)))
    parquet = tmp_path / "billing-2026-11.parquet"
    parquet.write_bytes(b"".join(_file("parquet", 10)))
    cut = tmp_path / "cut.csv"
    cut.write_bytes(whole.read_bytes()[:-30])
    assert check_file(parquet).format == "parquet"

    def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "export", "verify", *map(str, paths)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = verify(whole, parquet)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{whole}: complete (csv, 10 rows)",
        f"{parquet}: complete (parquet, 10 rows)",
    ]
    failed = verify(whole, cut, tmp_path / "absent.csv")
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert lines[1].startswith(f"{cut}: incomplete:")
    assert lines[2].startswith(f"{tmp_path / 'absent.csv'}: cannot be read")
