"""Uploaded import files: checked as bytes before any reader sees them, and the limits on imports.

The readers in `preftune.data` expect UTF-8 text. What people actually upload also includes gzip
files, UTF-16 exports from spreadsheet tools, binary files picked by mistake and, from an attacker,
JSON nested deep enough to exhaust Python's recursion limit. Each is answered here with one line
that names the file, the line and the reason (a 400), instead of an exception inside a reader.

Limits (stated on the project page, enforced here):
- a file of at most `MAX_UPLOAD_BYTES`, UTF-8 (a byte-order mark is accepted and dropped);
- JSON nested at most `MAX_JSON_DEPTH` levels;
- at most `MAX_IMPORT_ROWS` rows, and `MAX_TEXT_CHARS` characters per message or answer: the
  annotation page shows every answer whole, and the browser tests render one of that length.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import UploadFile

from preftune.web.store import StoreError

MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_IMPORT_ROWS = 100_000
MAX_TEXT_CHARS = 200_000
TEXT_SUFFIXES = {".jsonl", ".json", ".txt", ".csv"}
UPLOAD_SUFFIXES = TEXT_SUFFIXES | {".parquet"}
LIMITS_TEXT = (
    f"UTF-8, up to {MAX_UPLOAD_BYTES // 2**20} MB, {MAX_IMPORT_ROWS:,} rows and "
    f"{MAX_TEXT_CHARS:,} characters per message or answer"
)

_UTF8_BOM = b"\xef\xbb\xbf"
# Byte-order marks of encodings the readers do not take (longest first: UTF-32 LE starts like UTF-16 LE).
_OTHER_BOMS = [
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
]
_ARCHIVES = [(b"\x1f\x8b", "gzip-compressed", "gunzip it"), (b"PK\x03\x04", "a zip archive", "unzip it")]
# A JSON string literal; removed before counting brackets, since brackets inside strings do not nest.
_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


class UploadError(StoreError):
    """An upload refused before reading (maps to HTTP 400): `FILE:LINE: reason` or `FILE: reason`."""

    def __init__(self, filename: str, line: int, reason: str):
        super().__init__(f"{filename}:{line}: {reason}" if line else f"{filename}: {reason}")


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - start + 1


def checked_bytes(data: bytes, filename: str, suffix: str) -> bytes:
    """The upload's bytes, ready for a reader (BOM dropped), or UploadError (see module docstring)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(filename, 0, f"larger than the {MAX_UPLOAD_BYTES // 2**20} MB an import takes")
    for magic, what, fix in _ARCHIVES:
        if data.startswith(magic):
            raise UploadError(filename, 0, f"{what}; {fix} and upload the .jsonl inside")
    if suffix not in TEXT_SUFFIXES:
        return data
    for bom, encoding in _OTHER_BOMS:
        if data.startswith(bom):
            raise UploadError(filename, 1, f"encoded as {encoding} (byte-order mark); save it as UTF-8")
    data = data.removeprefix(_UTF8_BOM)
    nul = data.find(b"\x00")
    if nul >= 0:
        line, column = _line_and_column(data, nul)
        raise UploadError(
            filename, line, f"binary data (a NUL byte at column {column}); expected UTF-8 text "
            "(UTF-16 without a byte-order mark looks like this too)",
        )  # fmt: skip
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line, column = _line_and_column(data, error.start)
        raise UploadError(
            filename, line, f"not valid UTF-8 (byte 0x{data[error.start]:02x} at column {column}); save it as UTF-8"
        ) from None
    if suffix in (".jsonl", ".json"):
        _check_depth(text, filename, across_lines=suffix == ".json")
    return data


def _check_depth(text: str, filename: str, across_lines: bool) -> None:
    """Refuse JSON nested past MAX_JSON_DEPTH, naming the line where it goes too deep."""
    depth = 0
    for number, line in enumerate(text.split("\n"), 1):
        if not across_lines:
            depth = 0
        if "[" not in line and "{" not in line and not across_lines:
            continue
        for bracket in _BRACKET.finditer(_JSON_STRING.sub('""', line)):
            depth += 1 if bracket.group() in "[{" else -1
            if depth > MAX_JSON_DEPTH:
                raise UploadError(filename, number, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def saved_upload(upload: UploadFile, folder: str) -> Path:
    """The checked upload written to a private temporary file; the readers pick a format by suffix."""
    filename = upload.filename or "upload"
    suffix = Path(filename).suffix.lower()
    suffix = suffix if suffix in UPLOAD_SUFFIXES else ".jsonl"
    data = checked_bytes(upload.file.read(MAX_UPLOAD_BYTES + 1), filename, suffix)
    path = Path(folder) / f"upload{suffix}"
    path.write_bytes(data)
    return path


def check_rows(filename: str, texts_per_row: list[list[str]]) -> None:
    """Enforce the row and length limits on what a reader returned; rows are counted from 1."""
    if len(texts_per_row) > MAX_IMPORT_ROWS:
        raise UploadError(filename, 0, f"{len(texts_per_row):,} rows; an import takes at most {MAX_IMPORT_ROWS:,}")
    for number, texts in enumerate(texts_per_row, 1):
        for text in texts:
            if len(text) > MAX_TEXT_CHARS:
                raise UploadError(
                    filename, 0, f"row {number}: a text of {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}"
                )
            if "\x00" in text:
                raise UploadError(filename, 0, f"row {number}: a NUL character (\\u0000), which cannot be stored")


def data_error(error: Exception, upload: UploadFile) -> StoreError:
    """A reader's DataError, naming the file the admin chose rather than our temporary copy."""
    reason = getattr(error, "reason", str(error))
    line = getattr(error, "line", 0)
    return UploadError(upload.filename or "upload", line, reason)
