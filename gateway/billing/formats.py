"""The billing file formats: row types, column schemas, and streamed CSV / Parquet encoders.

Both encoders are incremental: rows go in batch by batch and bytes come out as they are
ready, so an export of any size is written in bounded memory. CSV is UTF-8 with a header,
``,``-separated, RFC 4180 quoting, ``\\r\\n`` line ends, empty fields for nulls, ISO 8601 UTC
times (``2026-11-01T00:00:00Z``) and plain decimals. Parquet is written with pyarrow, one row
group per batch, decimals as ``decimal128(18, 3)`` and times as ``timestamp[us, UTC]``.

A file is only complete with its end. A CSV file's last line is its trailer::

    # end rows=1234 sha256=<64 hex digits>

the number of data rows (header not counted) and the SHA-256 of every byte before the
trailer line. A Parquet file ends with its footer (the schema and row groups, then the magic
``PAR1``), written last; without it the file cannot be opened. :mod:`gateway.billing.verify`
checks both.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "CORRECTION_SCHEMA",
    "EXPORT_SCHEMA",
    "MEDIA_TYPES",
    "TRAILER_PREFIX",
    "CorrectionRow",
    "ExportRow",
    "FileFormat",
    "RowEncoder",
    "encoder",
]

FileFormat = Literal["csv", "parquet"]

MEDIA_TYPES: Final = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}

TRAILER_PREFIX: Final = b"# end "
"""How a CSV file's last line, its trailer, starts."""


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One meter register in one billing period (columns in docs/billing.md)."""

    period: str
    meter_id: str
    utility: str
    register: str
    unit: str
    time_zone: str
    opening_at: datetime
    opening_read: Decimal | None
    opening_method: str
    opening_estimate: str | None
    closing_at: datetime
    closing_read: Decimal | None
    closing_method: str
    closing_estimate: str | None
    consumption: Decimal | None
    flags: str


@dataclass(frozen=True, slots=True)
class CorrectionRow:
    """The adjustment of one billed period for one superseded estimate (docs/billing.md)."""

    meter_id: str
    register: str
    period: str
    boundary: str
    boundary_at: datetime
    estimate_method: str
    estimated_read: Decimal
    actual_read: Decimal
    actual_method: str
    estimated_consumption: Decimal | None
    actual_consumption: Decimal | None
    difference: Decimal | None
    superseded_at: datetime


_DEC: Final = pa.decimal128(18, 3)
_TS: Final = pa.timestamp("us", tz="UTC")

EXPORT_SCHEMA: Final = pa.schema(
    [
        pa.field("period", pa.string(), nullable=False),
        pa.field("meter_id", pa.string(), nullable=False),
        pa.field("utility", pa.string(), nullable=False),
        pa.field("register", pa.string(), nullable=False),
        pa.field("unit", pa.string(), nullable=False),
        pa.field("time_zone", pa.string(), nullable=False),
        pa.field("opening_at", _TS, nullable=False),
        pa.field("opening_read", _DEC),
        pa.field("opening_method", pa.string(), nullable=False),
        pa.field("opening_estimate", pa.string()),
        pa.field("closing_at", _TS, nullable=False),
        pa.field("closing_read", _DEC),
        pa.field("closing_method", pa.string(), nullable=False),
        pa.field("closing_estimate", pa.string()),
        pa.field("consumption", _DEC),
        pa.field("flags", pa.string(), nullable=False),
    ]
)

CORRECTION_SCHEMA: Final = pa.schema(
    [
        pa.field("meter_id", pa.string(), nullable=False),
        pa.field("register", pa.string(), nullable=False),
        pa.field("period", pa.string(), nullable=False),
        pa.field("boundary", pa.string(), nullable=False),
        pa.field("boundary_at", _TS, nullable=False),
        pa.field("estimate_method", pa.string(), nullable=False),
        pa.field("estimated_read", _DEC, nullable=False),
        pa.field("actual_read", _DEC, nullable=False),
        pa.field("actual_method", pa.string(), nullable=False),
        pa.field("estimated_consumption", _DEC),
        pa.field("actual_consumption", _DEC),
        pa.field("difference", _DEC),
        pa.field("superseded_at", _TS, nullable=False),
    ]
)

assert [f.name for f in fields(ExportRow)] == EXPORT_SCHEMA.names
assert [f.name for f in fields(CorrectionRow)] == CORRECTION_SCHEMA.names


def _csv_field(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


class _Sink(io.RawIOBase):
    """A write-only stream handing out what was written since the last ``take``.

    ``tell`` counts every byte ever written: Parquet records absolute offsets in its footer.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


class RowEncoder:
    """Turns batches of rows into bytes of one file; ``finish`` returns the last bytes (the
    CSV trailer, the Parquet footer)."""

    def __init__(self, schema: pa.Schema, file_format: FileFormat) -> None:
        self.schema = schema
        self.format = file_format
        self.media_type = MEDIA_TYPES[file_format]
        self._text = io.StringIO()
        self._csv = csv.writer(self._text, lineterminator="\r\n")
        self._sink = _Sink()
        self._parquet: pq.ParquetWriter | None = None
        self._digest = hashlib.sha256()
        self._rows = 0
        if file_format == "csv":
            self._csv.writerow(schema.names)
        else:
            self._parquet = pq.ParquetWriter(self._sink, schema, compression="zstd")

    def _take(self) -> bytes:
        if self._parquet is not None:
            return self._sink.take()
        data = self._text.getvalue().encode("utf-8")
        self._text.seek(0)
        self._text.truncate()
        self._digest.update(data)
        return data

    def encode(self, rows: Sequence[Any]) -> bytes:
        """Bytes for one batch of rows (a Parquet row group, or CSV lines)."""
        if not rows:
            return b""
        self._rows += len(rows)
        if self._parquet is None:
            self._csv.writerows([_csv_field(v) for v in astuple(row)] for row in rows)
        else:
            columns = list(zip(*(astuple(row) for row in rows), strict=True))
            table = pa.Table.from_arrays(
                [pa.array(col, type=f.type) for col, f in zip(columns, self.schema, strict=True)],
                schema=self.schema,
            )
            self._parquet.write_table(table)
        return self._take()

    def finish(self) -> bytes:
        """The file's last bytes: the Parquet footer, or the rest of the CSV and its trailer."""
        if self._parquet is not None:
            self._parquet.close()
            return self._take()
        data = self._take()
        trailer = f"rows={self._rows} sha256={self._digest.hexdigest()}\r\n".encode("ascii")
        return data + TRAILER_PREFIX + trailer


def encoder(schema: pa.Schema, file_format: FileFormat) -> RowEncoder:
    if file_format not in MEDIA_TYPES:
        raise ValueError(f"unknown file format {file_format!r}")
    return RowEncoder(schema, file_format)
