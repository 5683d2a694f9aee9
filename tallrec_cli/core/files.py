"""Files shared by every stage: atomic writes, hashing, staged folders that replace an artifact whole,
output checks, and the errors a disk can give.

Every artifact folder carries a ``manifest.json`` (`tallrec_cli.core.manifests`) written last and atomically,
so a folder without one is visibly incomplete.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tallrec_cli.core.errors import ArtifactError, ConfigError, DataError, ResourceError

MANIFEST_NAME = "manifest.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming_the_path(path):
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
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)  # staging folders
    }


class OutputOverlapError(ConfigError):
    """An output folder that is, contains or lies inside one of the command's inputs."""


def refuse_overlap(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], option: str = "--output",
                   inside_ok: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse an ``output`` that is, contains or lies inside an input: writing (or --overwrite) would destroy it.

    ``inside_ok`` names inputs an output may live in by design (``tallrec eval`` writes into RUN/eval).
    """
    target = Path(output).expanduser().resolve()
    allowed = {Path(path).expanduser().resolve() for path in inside_ok if path}
    for each in inputs:
        if not each:
            continue
        source = Path(each).expanduser().resolve()
        if target == source:
            relation = "is"
        elif source.is_relative_to(target):
            relation = "contains"
        elif target.is_relative_to(source) and source not in allowed:
            relation = "lies inside"
        else:
            continue
        raise OutputOverlapError(f"{option} {output} {relation} the input {each}: writing there would change or "
                                 "destroy the input", f"choose an {option} outside the inputs")


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, before any expensive work, when ``path`` (or the folder that would hold it) cannot be written."""
    folder = Path(path).expanduser().absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent  # an existing file is replaced in its folder; a missing path is created in one
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise user_os_error(exc, f"cannot write {path}") or exc from None


@contextlib.contextmanager
def naming_the_path(path: str | os.PathLike) -> Iterator[None]:
    """A write that fails without saying where (``handle.write`` on a full disk reports no file name) is
    re-raised naming ``path``, so the error a person sees says which file or folder could not be written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _USER_ERRNOS:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def check_output_file(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Before any work: ``path`` can be written as a file: not a folder, not an existing file unless
    ``overwrite``, on a writable disk."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder, not a file", "choose another --output (a file)")
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path} already exists", "pass --overwrite to replace it, or choose another --output")
    check_writable(path)


_USER_ERRNOS = {
    errno.ENOSPC: ("no space left on the disk", "free some space (or choose an output on another disk) and run again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space (or choose an output on another disk) and run again"),
    errno.EROFS: ("the file system is read-only", "choose an output folder on a writable disk"),
    errno.EACCES: ("permission denied", "choose an output folder you can write to"),
    errno.EPERM: ("operation not permitted", "choose an output folder you can write to"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EISDIR: ("the path is a folder, not a file", "check the path"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter path"),
}
# torch.save's C++ writer reports a full disk as "unexpected pos" mid-file and as "basic_ios::clear" when it hits at
# the close (seen by acceptance/faults.py); safetensors as "file write failed".
_WRITE_FAILED = ("No space left on device", "unexpected pos", "basic_ios::clear", "file write failed")


def _os_errors(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain (libraries re-wrap OSErrors), or a failed-write message."""
    return any((isinstance(each, OSError) and each.errno in (errno.ENOSPC, errno.EDQUOT))
               or any(text in str(each) for text in _WRITE_FAILED) for each in _os_errors(exc))


def user_os_error(exc: BaseException, doing: str | None = None) -> ResourceError | None:
    """A ResourceError for a file-system failure the user can fix (disk full, read-only, permissions), else None."""
    for each in _os_errors(exc):
        if isinstance(each, OSError) and each.errno in _USER_ERRNOS:
            reason, hint = _USER_ERRNOS[each.errno]
            where = each.filename or doing
            message = f"{doing + ': ' if doing else ''}{reason}" + (f" ({where})" if where and where != doing else "")
            return ResourceError(message, _home_hint(where) or hint)
    if is_disk_full(exc):
        reason, hint = _USER_ERRNOS[errno.ENOSPC]
        return ResourceError(f"{doing or 'writing failed'}: {reason}? ({str(exc).splitlines()[0][:200]})", hint)
    return None


def _home_hint(where: str | os.PathLike | None) -> str | None:
    """The fix for a failure inside TALLREC_HOME (caches, the default registry), which no --output moves."""
    home = tallrec_home().expanduser().absolute()
    if where is None or not Path(where).expanduser().absolute().is_relative_to(home):
        return None
    return f"{home} is TALLREC_HOME (caches and the default adapter registry): free space there, or point " \
           "TALLREC_HOME at a writable folder with room"


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if sys.platform != "linux":
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _swap_contents(staging: Path, target: Path) -> None:
    """Swap the entries of ``target`` (a mount point, which cannot be renamed) for those of ``staging``.

    The old entries go to a hidden folder inside ``target`` first (the manifest before anything else), the
    new ones come in with the manifest last: a kill half-way leaves a folder without a manifest (visibly
    incomplete) and the old data in ``.tallrec-old-*``, never a mix that claims to be complete.
    """
    old = Path(tempfile.mkdtemp(prefix=".tallrec-old-", dir=target))
    keep = {staging.resolve(), old.resolve()}
    entries = [entry for entry in target.iterdir() if entry.resolve() not in keep]
    for entry in sorted(entries, key=lambda entry: entry.name != MANIFEST_NAME):
        shutil.move(entry, old / entry.name)
    for entry in sorted(staging.iterdir(), key=lambda entry: entry.name == MANIFEST_NAME):
        shutil.move(entry, target / entry.name)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


_ASIDE = ".old"  # suffix of a folder renamed aside during a swap (see replace_dir / _restore_aside)


def _restore_aside(target: Path) -> None:
    """Put back an old folder renamed aside by a swap that was killed before the new one moved in."""
    if os.path.lexists(target):
        return
    aside = sorted(target.parent.glob(f".{glob.escape(target.name)}.*.partial{_ASIDE}"), key=os.path.getmtime)
    if aside:
        os.replace(aside[-1], target)


def replace_dir(source: Path, target: Path) -> None:
    """Swap a fully written folder into place, keeping the old ``target`` until the new one is there.

    Readers never see a half-written folder and a kill at any moment loses neither version: an atomic
    exchange where the OS has one, else rename-aside then rename-in (the old one is put back on failure).
    A mount point cannot be renamed (EBUSY) or exchanged across devices (EXDEV): its contents are swapped.
    """
    source, target = Path(source), Path(target)
    if not os.path.lexists(target):
        os.replace(source, target)
        return
    try:
        if _exchange(source, target):
            shutil.rmtree(source, ignore_errors=True)  # ``source`` now holds the old folder
            return
        aside = source.with_name(source.name + _ASIDE)
        os.replace(target, aside)
        try:
            os.replace(source, target)
        except BaseException:
            os.replace(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV):
            raise
        _swap_contents(source, target)


def artifact_kind(folder: str | os.PathLike) -> str | None:
    """The ``kind`` its manifest gives ``folder``, or None (no manifest, or not one this tool can read)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest.get("kind") if isinstance(manifest, dict) else None


def check_output_folder(target: str | os.PathLike, kinds: str | Iterable[str], overwrite: bool = False) -> Path:
    """The folder to write for ``target`` (a symlink's destination), checked before any work: refused when it
    is a file, or a non-empty folder without ``overwrite``. ``overwrite`` replaces only an artifact of one of
    ``kinds`` (what the command writes): anything else there is named, never deleted."""
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()  # replace what the link points to; the link itself stays
    _restore_aside(target)
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{target} is a file, not a folder", "choose another --output (a folder)")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise ArtifactError(f"{target} already exists and is not empty",
                                "pass --overwrite or choose another --output")
        _check_replaceable(target, (kinds,) if isinstance(kinds, str) else tuple(kinds))
    check_writable(target)
    return target


def _check_replaceable(target: Path, kinds: tuple[str, ...]) -> None:
    # a swap of a mount point's contents killed half-way left the old manifest in .tallrec-old-*
    found = artifact_kind(target) or next(filter(None, map(artifact_kind, target.glob(".tallrec-old-*"))), None)
    if found in kinds:
        return
    expected = " or ".join(f"a {kind}" for kind in kinds)
    names = sorted(entry.name for entry in target.iterdir())
    what = (f"a {found} artifact" if found else
            f"files that are no tallrec artifact ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    raise ArtifactError(f"{target} holds {what}, not {expected}: --overwrite replaces only {expected} (or an "
                        "empty folder), so nothing was changed", "choose another --output")


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike, kinds: str | Iterable[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a hidden sibling and move it into place only when the block succeeds.

    Nothing half-written is ever left at ``target`` and the old ``target`` stays until the new one is
    complete; on error the staging folder is removed. A mount point is staged inside itself. ``kinds`` and
    ``overwrite``: see `check_output_folder`.
    """
    target = check_output_folder(target, kinds, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    beside = target if os.path.ismount(target) else target.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=beside))
    try:
        with naming_the_path(target):
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
