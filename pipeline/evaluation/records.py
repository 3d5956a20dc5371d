"""Raw benchmark records: reading them with their line numbers, reading their fields, and saying what is wrong.

Every reader yields a `Row` (the record, its file and line) or a `Skipped` (a record that cannot even be read as
an object, e.g. a JSONL line that is not JSON); a field that is missing or wrong raises `MalformedRecord` with
`FILE:LINE: field: problem`, which the loaders turn into a `Skipped` and go on. Answers are parsed by the form a
benchmark gives them in: a letter, a 0-based index, or an option's text.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import DataError

_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[\.\):]\s*")
_LETTER = re.compile(r"\(?([A-Za-z])\)?\.?")


@dataclass(frozen=True)
class Skipped:
    """A record that could not be read as a question: where it is, which field, what is wrong."""

    where: str
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.problem}"


class MalformedRecord(DataError):
    """One record is malformed; the loaders skip it (or, with strict=True, stop on it)."""

    def __init__(self, where: str, field: str, problem: str) -> None:
        self.skipped = Skipped(where, field, problem)
        super().__init__(str(self.skipped))


class Row:
    """One raw record and where it came from, for `FILE:LINE: field: problem` messages."""

    __slots__ = ("source", "line", "data")

    def __init__(self, source: Path, line: int, data: dict[str, Any]) -> None:
        self.source, self.line, self.data = source, line, data

    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def fail(self, field: str, problem: str) -> MalformedRecord:
        return MalformedRecord(self.where(), field, problem)

    def get(self, field: str, kind: type | tuple[type, ...] = str, *, required: bool = True) -> Any:
        if field not in self.data or self.data[field] is None:
            if required:
                raise self.fail(field, "missing")
            return None
        value = self.data[field]
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # ids are often numbers in CSV/parquet
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(field, f"expected {names}, got {type(value).__name__} {value!r}")
        if isinstance(value, str):
            value = value.strip()
            if not value and required:
                raise self.fail(field, "empty")
        return value

    def options(self, field: str) -> list[str]:
        raw = self.get(field, (list, tuple))
        opts = []
        for i, o in enumerate(raw):
            if not isinstance(o, (str, int, float)) or isinstance(o, bool):
                raise self.fail(field, f"option {i} is {type(o).__name__}, expected text")
            opts.append(str(o).strip())
        if len(opts) < 2:
            raise self.fail(field, f"needs at least 2 options, got {len(opts)}")
        if not any(opts):
            raise self.fail(field, "every option is empty")
        return opts

    def duration(self, field: str, scale: float = 1.0) -> float | None:
        """A duration in seconds (`scale` converts, e.g. 60 for minutes); missing is None, nonsense is malformed."""
        value = self.data.get(field)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise self.fail(field, f"expected a positive number of {'minutes' if scale == 60 else 'seconds'}, got {value!r}")
        return float(value) * scale


def strip_letter(option: str) -> str:
    """`"A. a red car"` -> `"a red car"` (Video-MME style prefixes); other text is returned unchanged."""
    return _LETTER_PREFIX.sub("", option, count=1).strip()


def letter_index(value: Any, n_options: int) -> int:
    """An answer letter (`"B"`, `"(B)"`, `"B."`) -> its 0-based index among `n_options`."""
    m = _LETTER.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"answer {value!r} is not an option letter")
    idx = ord(m.group(1).upper()) - ord("A")
    if not 0 <= idx < n_options:
        raise ValueError(f"answer {value!r} is outside the {n_options} options")
    return idx


def position_index(value: Any, n_options: int) -> int:
    """An answer given as a 0-based index (an int, or digits as in a CSV cell) -> that index, checked."""
    if isinstance(value, bool):
        raise ValueError(f"answer {value!r} is not an option index")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise ValueError(f"answer {value!r} is not an option index")
    if not 0 <= value < n_options:
        raise ValueError(f"answer {value!r} is outside the {n_options} options")
    return value


def text_indices(value: Any, options: list[str]) -> list[int]:
    """Every option whose text is the answer's text (numbers compared as text: MLVU's count task has '1'..'7')."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"answer {value!r} is not an option's text")
    text = str(value).strip()
    return [i for i, o in enumerate(options) if o == text]


def answer_index(value: Any, options: list[str]) -> int:
    """An answer in a hand-written file: an int is an index; text is an option's text, else a letter.

    Text is matched first, so with numeric options ("1", "2", ...) the answer "2" is the option "2", never index 2.
    """
    if isinstance(value, bool):
        raise ValueError(f"answer {value!r} is not an index, a letter or an option")
    if isinstance(value, (int, float)):
        return position_index(value, len(options))
    if isinstance(value, str):
        matches = text_indices(value, options)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ValueError(f"answer {value!r} is options {', '.join(str(i) for i in matches)}: ambiguous")
        if _LETTER.fullmatch(value.strip()):
            return letter_index(value, len(options))
        raise ValueError(f"answer {value!r} is neither one of the options nor a letter")
    raise ValueError(f"answer {value!r} is not an index, a letter or an option")


def iter_json_array(path: Path) -> Iterator[Row | Skipped]:
    """Each element of a top-level JSON array with the line it starts on; a non-object element is Skipped.

    A syntax error ends the file: nothing after it can be located, so it is a DataError.
    """
    text = read_text(path)
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise DataError(f"{path}:1: expected a JSON array of questions")
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        line = text.count("\n", 0, pos) + 1
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(obj, dict):
            yield Row(path, line, obj)
        else:
            yield Skipped(f"{path}:{line}", "(record)", f"expected a JSON object, got {type(obj).__name__}")
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected ',' or ']' in the JSON array")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None


def iter_jsonl_rows(path: Path) -> Iterator[Row | Skipped]:
    """Each line of a JSONL file; a line that is not a JSON object is Skipped (the next line is still readable)."""
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):  # not splitlines: JSON text may hold U+2028
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Skipped(f"{path}:{lineno}", "(line)", f"not valid JSON ({exc.msg})")
            continue
        yield Row(path, lineno, obj) if isinstance(obj, dict) else Skipped(
            f"{path}:{lineno}", "(line)", f"expected a JSON object, got {type(obj).__name__}")


def iter_records(path: Path) -> Iterator[Row | Skipped]:
    """Rows of a JSON array, JSONL, CSV or parquet file, by extension, each with its line or row number."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        yield from iter_json_array(path)
    elif suffix == ".jsonl":
        yield from iter_jsonl_rows(path)
    elif suffix == ".csv":
        read_text(path)  # existence and encoding, with a clear error
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                extra = row.pop(None, None)  # type: ignore[call-overload]
                if extra:
                    yield Skipped(f"{path}:{reader.line_num}", "(row)",
                                  f"{len(extra)} more cells than the {len(reader.fieldnames or [])} columns")
                    continue
                yield Row(path, reader.line_num, dict(row))
    elif suffix == ".parquet":
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        import pyarrow.parquet as pq  # a dependency of `datasets`

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
        for i, rec in enumerate(table.to_pylist(), start=1):
            yield Row(path, i, rec)
    else:
        raise DataError(f"{path}: unknown annotation file type {suffix!r} (expected .json, .jsonl, .csv or .parquet)")
