"""Atomic file writing, hashing and manifests shared by every stage.

Every artifact folder carries a ``manifest.json`` written last and atomically, so a folder without
one is visibly incomplete. Later stages read manifests, never folder names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tallrec_cli.errors import ArtifactError

MANIFEST_NAME = "manifest.json"
_TRACKED_PACKAGES = (
    "torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "accelerate",
    "safetensors", "scikit-learn", "numpy", "pandas",
)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes files private; artifacts are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(payload, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write one JSON object per line; return the number of rows."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False))
            handle.write("\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read JSON lines; a malformed line is an error naming file:line."""
    from tallrec_cli.errors import DataError

    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})",
                                "fix or remove that line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line",
                                "each line must be one record object")
            rows.append(row)
    return rows


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hashes(folder: str | os.PathLike, exclude: Iterable[str] = (MANIFEST_NAME,)) -> dict[str, str]:
    """sha256 of every file below ``folder`` (relative posix paths), manifest excluded."""
    folder = Path(folder)
    excluded = set(exclude)
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in excluded
        and not path.name.startswith(".")
    }


def package_versions() -> dict[str, str]:
    from importlib import metadata

    import tallrec_cli

    versions = {"tallrec-cli": tallrec_cli.__version__, "python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(folder: str | os.PathLike, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` last: kind, creation time, versions, command line and ``payload``."""
    manifest = {
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "command": sys.argv,
        **payload,
    }
    write_json_atomic(Path(folder) / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike, kind: str | Iterable[str] | None = None) -> dict[str, Any]:
    """Read a folder's manifest; a missing one means the artifact never finished."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.exists():
        raise ArtifactError(f"{folder} does not exist", "check the path")
    if not path.exists():
        raise ArtifactError(
            f"{folder} has no {MANIFEST_NAME}: it is not a tallrec artifact or it never finished",
            "re-run the command that creates it",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc.msg})", "re-create the artifact") from None
    if kind is not None:
        kinds = {kind} if isinstance(kind, str) else set(kind)
        if manifest.get("kind") not in kinds:
            raise ArtifactError(
                f"{folder} holds a '{manifest.get('kind')}' artifact, expected {' or '.join(sorted(kinds))}",
                "pass the right folder",
            )
    return manifest


def replace_dir(source: Path, target: Path) -> None:
    """Swap a fully written folder into place (readers never see a half-written one)."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(source, target)


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a hidden sibling and move it into place only when the block succeeds.

    Nothing half-written is ever left at ``target``: on error the staging folder is removed.
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ArtifactError(f"{target} already exists and is not empty", "pass --overwrite or choose another --output")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        replace_dir(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def tallrec_home() -> Path:
    """Folder for caches (converted models, downloads) and the default adapter registry."""
    return Path(os.environ.get("TALLREC_HOME", Path.home() / ".cache" / "tallrec"))
