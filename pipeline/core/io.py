"""Atomic file writes, JSONL reading, and the one resumable journal.

Every output a long job writes goes through here: to a temporary file in the same folder, flushed and
fsynced, then renamed over the target. A killed job therefore leaves either the old file or the new one,
never a half-written file that a resume would trust. Work that is done item by item (scene detection over a
folder, batch selection, evaluation) appends each finished item to a `Journal`, so a rerun skips it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ValidationError

from pipeline.core.errors import DataError, KframesError


def _default_file_mode() -> int:
    """0o666 less the process's umask: what `open()` would create (mkstemp alone gives 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on clean exit fsync and rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
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


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def file_digests(folder: str | os.PathLike[str], *, skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """`{relative path: {"size", "sha256"}}` of every file under `folder`: recorded when an artifact is finished, and
    compared (`verify_digests`) before it is trusted again."""
    root = Path(folder)
    skipped = set(skip)
    return {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in skipped
    }


def verify_digests(folder: str | os.PathLike[str], digests: dict[str, dict[str, Any]], *, hashes: bool = True) -> list[str]:
    """What no longer matches the recorded digests: `["model.safetensors: 1024 bytes, expected 4096", ...]`."""
    root = Path(folder)
    problems = []
    for name, want in digests.items():
        p = root / name
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif p.stat().st_size != want.get("size"):
            problems.append(f"{name}: {p.stat().st_size} bytes, expected {want.get('size')}")
        elif hashes and want.get("sha256") and sha256_file(p) != want["sha256"]:
            problems.append(f"{name}: content changed (sha256 differs)")
    return problems


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


class LockedError(KframesError):
    """Another process is writing the same output."""


class OutputLock:
    """One writer per output: an exclusive `flock` on `<folder>/.kframes.lock[.<name>]`.

    The kernel releases the lock when its process ends, however it ends (kill -9 included), so a lock left by a dead
    process is simply taken over. The file says who holds it, for the second writer's error message. Re-entrant
    within one process (a pipeline that locks its root and then a stage folder inside it never waits on itself).
    `name` separates writers that may share a folder (the shards of a data build).
    """

    _held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth), this process

    def __init__(self, folder: str | os.PathLike[str], name: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / (".kframes.lock" + (f".{name}" if name else ""))

    def __enter__(self) -> OutputLock:
        key = str(self.path.resolve()) if self.path.parent.exists() else str(self.path.absolute())
        if key in self._held:
            fd, depth = self._held[key]
            self._held[key] = (fd, depth + 1)
            self._key = key
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise LockedError(
                f"{self.folder}: another kframes process is writing here ({holder}); wait for it to finish or "
                "choose another output"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": " ".join(sys.argv[:6])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._held[key] = (fd, 1)
        self._key = key
        return self

    def __exit__(self, *exc: object) -> None:
        fd, depth = self._held[self._key]
        if depth > 1:
            self._held[self._key] = (fd, depth - 1)
            return
        del self._held[self._key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
