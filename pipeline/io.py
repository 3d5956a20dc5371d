"""Atomic file writes and JSONL reading.

Every output a long job writes goes through here: to a temporary file in the same folder, flushed and
fsynced, then renamed over the target. A killed job therefore leaves either the old file or the new one,
never a half-written file that a resume would trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from pipeline.errors import DataError


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
    from pydantic import ValidationError

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
