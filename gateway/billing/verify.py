"""Is an export file complete? The check a consumer runs before loading one.

A download or a pipe that breaks midway leaves a file that may look whole. Both formats end
with something written only after the last row (:mod:`gateway.billing.formats`):

- **CSV**: the last line is the trailer ``# end rows=N sha256=H``. The file is complete when
  ``H`` is the SHA-256 of every byte before the trailer line and the file holds ``N`` records
  after the header. A cut anywhere loses the trailer (or leaves a hash that does not match).
- **Parquet**: the footer (file metadata, its length, the magic ``PAR1``) comes last and is
  read first; a cut file has none and cannot be opened. Every row group must also decode.

``gateway export verify FILE…`` runs :func:`check_file` on each file.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import pyarrow as pa
import pyarrow.parquet as pq

from gateway.billing.errors import IncompleteFileError
from gateway.billing.formats import TRAILER_PREFIX, FileFormat

__all__ = ["FileCheck", "check_csv", "check_file", "check_parquet"]

_TRAILER: Final = re.compile(rb"# end rows=(\d{1,18}) sha256=([0-9a-f]{64})\r\n")
_TAIL_BYTES: Final = 256
_PARQUET_MAGIC: Final = b"PAR1"


@dataclass(frozen=True, slots=True)
class FileCheck:
    """A complete file: its format and number of data rows."""

    format: FileFormat
    rows: int


def _trailer(stream: IO[bytes]) -> tuple[int, int, str]:
    """Where the trailer line starts, the rows and the hash it states."""
    size = stream.seek(0, 2)
    stream.seek(max(0, size - _TAIL_BYTES))
    tail = stream.read()
    if not tail.endswith(b"\r\n"):
        raise IncompleteFileError("the file does not end with a complete line: it was cut off")
    start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
    line = tail[start:]
    if not line.startswith(TRAILER_PREFIX):
        raise IncompleteFileError("the last line is not the '# end' trailer: the file is cut off")
    match = _TRAILER.fullmatch(line)
    if match is None:
        raise IncompleteFileError("the '# end' trailer is malformed")
    return size - len(line), int(match[1]), match[2].decode("ascii")


def _lines(stream: IO[bytes], length: int, digest: hashlib._Hash) -> Iterator[str]:
    """The first ``length`` bytes as text lines, hashed as they are read."""
    stream.seek(0)
    remaining = length
    for raw in stream:
        if remaining <= 0:
            break
        line = raw[:remaining]
        remaining -= len(line)
        digest.update(line)
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            raise IncompleteFileError("the file is not UTF-8 text") from None


def check_csv(stream: IO[bytes]) -> FileCheck:
    """Check a CSV export (a seekable binary stream); :class:`IncompleteFileError` if not whole."""
    body, stated_rows, stated_hash = _trailer(stream)
    digest = hashlib.sha256()
    try:
        records = sum(1 for _ in csv.reader(_lines(stream, body, digest)))
    except csv.Error as exc:
        raise IncompleteFileError(f"the CSV cannot be parsed: {exc}") from None
    if digest.hexdigest() != stated_hash:
        raise IncompleteFileError("the SHA-256 of the file does not match its trailer")
    rows = max(0, records - 1)  # the header
    if rows != stated_rows:
        raise IncompleteFileError(f"the trailer states {stated_rows} rows, the file has {rows}")
    return FileCheck("csv", rows)


def check_parquet(stream: IO[bytes]) -> FileCheck:
    """Check a Parquet export: the footer is there and every row group decodes."""
    try:
        parquet = pq.ParquetFile(stream)
        for group in range(parquet.num_row_groups):
            parquet.read_row_group(group)
    except (pa.ArrowException, OSError) as exc:
        raise IncompleteFileError(f"the Parquet file cannot be read: {exc}") from None
    return FileCheck("parquet", parquet.metadata.num_rows)


def check_file(path: Path) -> FileCheck:
    """Check an export file of either format (told apart by its first bytes)."""
    with path.open("rb") as stream:
        if stream.read(len(_PARQUET_MAGIC)) == _PARQUET_MAGIC:
            return check_parquet(stream)
        return check_csv(stream)
