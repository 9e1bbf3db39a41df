"""Files on disk: atomic writes, and tensor files (safetensors plus JSON, see :func:`save_tensors`) that are verified
on load and never unpickled.

Why: see the design notes (docs/design.md, "Checkpoints and shards without pickle").
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from metaimprove.errors import UserError

TENSOR_FORMAT = "metaimprove-tensors"
TENSOR_FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100_000_000
"""safetensors' own bound on a file's JSON header"""
TEMP_SUFFIX = ".tmp"
"""suffix of the temporary files atomic writes rename (``.<name>.<random>.tmp``), so a resuming writer can remove
them"""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename, fsync dir."""
    target = Path(path)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
    # Not tempfile.mkstemp: its files are private (0600); these get the umask's permissions like any other.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename itself must reach the disk too, or a crash could forget it.
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def exclusive(root: str | os.PathLike[str], stage: str) -> Iterator[None]:
    """Hold an exclusive lock on the directory ``root`` while ``stage`` writes into it, so that two processes never
    write one run directory (one-line :class:`UserError` for the second); the lock goes with the process."""
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{root} is being written by another process ({stage} refuses to share it); "
                            "wait for it to finish or choose another out= directory") from None
        yield
    finally:
        os.close(fd)


def to_json_bytes(obj: Any) -> bytes:
    """Canonical JSON (sorted keys, no NaN/Infinity) of ``obj``; a one-line UserError if it has none."""
    try:
        return (json.dumps(obj, sort_keys=True, indent=1, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise UserError(f"metadata is not plain JSON ({exc}); use str keys and finite numbers, lists, dicts") from exc


def plain_json(obj: Any) -> Any:
    """``obj`` as plain JSON types (tuples become lists), so that it compares equal to its saved form."""
    return json.loads(to_json_bytes(obj))


def differences(old: Any, new: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every ``(dotted key, old value, new value)`` where two nested dicts of settings differ (a key one lacks reads
    as None there)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            yield from differences(old.get(key), new.get(key), f"{prefix}{key}.")
    elif old != new:
        yield prefix.rstrip("."), old, new


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> str:
    """Write ``obj`` as canonical JSON to ``path`` atomically; returns the file's sha256."""
    data = to_json_bytes(obj)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def atomic_write_csv(path: str | os.PathLike[str], fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` (dicts keyed by ``fields``) as CSV with a header to ``path`` atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def read_json(path: str | os.PathLike[str], expected_sha256: str | None = None) -> Any:
    """Parse the JSON file at ``path``, checking its sha256 when one is expected (one-line UserError)."""
    data = _read(path)
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise UserError(f"{path} is corrupt: its sha256 does not match the recorded one (modified or torn)")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); the file is torn or not one of ours") from exc


def meta_path(path: str | os.PathLike[str]) -> Path:
    """The JSON file beside the tensor file ``path`` (``x.safetensors`` → ``x.json``)."""
    target = Path(path)
    if target.suffix != ".safetensors":
        raise ValueError(f"tensor files end in .safetensors, got {target}")
    return target.with_suffix(".json")


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Write ``tensors`` to ``path`` (``.safetensors``) and ``meta`` to the JSON beside it, each atomically::

        name.safetensors   the tensors (safetensors: a JSON header plus raw bytes; no code can hide in it)
        name.json          {"format", "format_version", "tensors_sha256", "meta"}

    Returns the sha256 of the JSON file, which records the tensor file's sha256 and so pins both: a manifest or a
    checkpoint index stores that one digest for :func:`load_tensors` to check. ``meta`` must be plain JSON (tuples
    come back as lists).
    """
    data = safetensors.torch.save({k: v.detach().contiguous() for k, v in tensors.items()})
    header = to_json_bytes({
        "format": TENSOR_FORMAT,
        "format_version": TENSOR_FORMAT_VERSION,
        "tensors_sha256": sha256_bytes(data),
        "meta": meta,
    })
    # Tensors first: a crash in between leaves a tensor file whose JSON is missing or stale, which
    # loading refuses, never a JSON that vouches for tensors that are not there.
    atomic_write_bytes(path, data)
    atomic_write_bytes(meta_path(path), header)
    return sha256_bytes(header)


def load_tensors(path: str | os.PathLike[str],
                 expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a tensor file written by :func:`save_tensors`: ``(tensors, meta)``, verified.

    Raises a one-line :class:`UserError` if either file is missing, torn, truncated or modified,
    if its JSON does not match ``expected_sha256`` (the digest :func:`save_tensors` returned), or if
    the tensor file is not a safetensors file (e.g. a pickle under a ``.safetensors`` name: it is
    refused, never unpickled).
    """
    header_file = meta_path(path)
    if not Path(path).exists():
        raise UserError(f"{path} is missing")
    if not header_file.exists():
        raise UserError(f"{path} comes without its metadata {header_file.name} beside it; "
                        "copy both files (it is not loaded without them)")
    header = read_json(header_file, expected_sha256)
    if not (isinstance(header, dict) and header.get("format") == TENSOR_FORMAT
            and isinstance(header.get("tensors_sha256"), str) and isinstance(header.get("meta"), dict)):
        raise UserError(f"{header_file} is not a metaimprove tensor-file header")
    if header.get("format_version") != TENSOR_FORMAT_VERSION:
        raise UserError(f"{header_file} has format version {header.get('format_version')!r}; this metaimprove "
                        f"reads version {TENSOR_FORMAT_VERSION}")
    data = _read(path)
    if sha256_bytes(data) != header["tensors_sha256"]:
        raise UserError(f"{path} is corrupt: its sha256 does not match {header_file.name} "
                        "(torn, truncated or modified)")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error type, or others on odd input
        raise UserError(f"{path} is not a valid safetensors file ({exc}); refusing to load it") from exc
    return tensors, header["meta"]


def tensor_names(path: str | os.PathLike[str]) -> set[str]:
    """The names of the tensors in a safetensors file, from its header alone (unverified: for deciding what a
    dataset holds before :func:`load_tensors` reads and checks it all). One-line :class:`UserError` on a file
    that is missing or has no readable header."""
    try:
        with Path(path).open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size <= MAX_HEADER_BYTES else None
    except FileNotFoundError as exc:
        raise UserError(f"{path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is corrupt: no readable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise UserError(f"{path} is corrupt: no readable safetensors header")
    return set(header) - {"__metadata__"}


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"{path} is missing") from exc
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
