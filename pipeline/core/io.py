"""Atomic file writes, JSONL reading, and the one resumable journal.

Every output a long job writes goes through here: to a temporary file in the same folder, flushed and
fsynced, then renamed over the target. A killed job therefore leaves either the old file or the new one,
never a half-written file that a resume would trust. Work that is done item by item (scene detection over a
folder, batch selection, evaluation) appends each finished item to a `Journal`, so a rerun skips it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ValidationError

from pipeline.core.errors import DataError


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on clean exit fsync and rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    return obj


def dumps_line(obj: Any) -> str:
    return json.dumps(_to_jsonable(obj), ensure_ascii=False, separators=(",", ":"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(_to_jsonable(obj), ensure_ascii=False, indent=indent) + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], records: Iterable[Any]) -> int:
    """Write records (dicts or pydantic models) one per line, atomically. Returns the count."""
    count = 0
    with atomic_open(path, "w") as fh:
        for rec in records:
            fh.write(dumps_line(rec) + "\n")
            count += 1
    return count


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) for each non-blank line; a line that is not a JSON object is a DataError."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    with p.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def read_jsonl_models(path: str | os.PathLike[str], model: type[BaseModel]) -> list[Any]:
    """Read and validate every line; the first bad line raises a DataError naming FILE:LINE."""
    out = []
    for lineno, obj in iter_jsonl(path):
        try:
            out.append(model.model_validate(obj))
        except ValidationError as exc:
            raise DataError(f"{path}:{lineno}: {format_validation_error(exc)}") from None
    return out


def validation_problems(exc: Any) -> list[str]:
    """One `field.path: message` per problem of a pydantic ValidationError."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "(record)"
        problems.append(f"{loc}: {err.get('msg', 'invalid')}")
    return problems


def format_validation_error(exc: Any) -> str:
    """All problems of a ValidationError on one line, joined by ' | '."""
    return " | ".join(validation_problems(exc))


class Journal:
    """A JSONL file of records keyed by some of their fields, appended one fsynced line at a time.

    A kill can only tear the last line; it is dropped (and cut from the file) when the journal is reopened, so
    that record is simply recomputed. A bad line anywhere else is a real corruption and an error naming the line.
    `key` is either the names of the fields that identify a record or a function of the record; `check`, if
    given, validates each record read back (raising ValueError or a pydantic ValidationError).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: Sequence[str] | Callable[[dict[str, Any]], Hashable],
        *,
        check: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self._by_fields = not callable(key)
        self._key = (lambda rec, fields=tuple(key): tuple(rec[f] for f in fields)) if self._by_fields else key
        self._check = check
        self.records: dict[Hashable, dict[str, Any]] = {}
        if self.path.is_file():
            self._load()

    def key(self, rec: dict[str, Any]) -> Hashable:
        return self._key(rec)

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        good_end = offset = 0
        for i, raw in enumerate(lines):
            if raw.strip():
                try:
                    rec = json.loads(raw)
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                    if self._check is not None:
                        self._check(rec)
                    self.records[self.key(rec)] = rec
                except (ValueError, KeyError, TypeError, ValidationError) as exc:
                    if any(x.strip() for x in lines[i + 1 :]):
                        problem = format_validation_error(exc) if isinstance(exc, ValidationError) else exc
                        raise DataError(f"{self.path}:{i + 1}: corrupt record ({problem}); delete the line to resume") from None
                    break  # a torn last line: recompute it
            offset += len(raw) + 1
            good_end = min(offset, len(data))
        if good_end == len(data) and (not data or data.endswith(b"\n")):
            return
        with self.path.open("r+b") as fh:
            fh.truncate(good_end)
            if good_end and not data[:good_end].endswith(b"\n"):
                fh.seek(good_end)
                fh.write(b"\n")

    def __contains__(self, key: Hashable) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, *key: Any) -> dict[str, Any] | None:
        """The record with this key: `get(a, b)` for field-name keys, `get(value)` for a key function."""
        return self.records.get(tuple(key) if self._by_fields else key[0])

    def add(self, rec: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(dumps_line(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records[self.key(rec)] = rec
