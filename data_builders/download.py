"""Download MovieLens archives into the cache, verify their sha256 and extract them safely."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from data_builders.readers import Report
from tallrec_cli.core.errors import DataError
from tallrec_cli.core.files import sha256_file, tallrec_home

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens/"
URL_ENV = "TALLREC_MOVIELENS_URL"
ARCHIVES = {"movielens-100k": "ml-100k", "movielens-1m": "ml-1m", "movielens-latest": "ml-latest-small"}
# Published checksums (tensorflow/datasets url_checksums); ml-1m's is not pinned anywhere we trust.
KNOWN_SHA256 = {
    "ml-100k": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    "ml-1m": None,
    "ml-latest-small": "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
}


def fetch_movielens(source: str, report: Report, base_url: str | None = None, sha256: str | None = None,
                    on_progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Folder with the extracted files of ``source``'s archive, downloading it once into the cache."""
    name = ARCHIVES[source]
    base = (base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/") + "/"
    cache = tallrec_home() / "downloads"
    archive, extracted = cache / f"{name}.zip", cache / name
    expected = sha256 or KNOWN_SHA256[name]
    if not archive.exists():
        _download(base + archive.name, archive, on_progress)
    actual = sha256_file(archive)
    if expected is None:
        report.note(f"{archive.name} sha256 {actual} (no published checksum; pin it with --sha256)")
    elif actual != expected.lower():
        archive.unlink()
        raise DataError(f"{archive.name} from {base} has sha256 {actual}, expected {expected}; the file was deleted",
                        "retry the download; if it persists the mirror serves different data (check --sha256)")
    if not extracted.exists():
        _extract(archive, extracted)
    nested = extracted / name
    return nested if nested.is_dir() else extracted


def _download(url: str, target: Path, on_progress: Callable[[int, int | None], None] | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := response.read(1 << 16):
                handle.write(chunk)
                done += len(chunk)
                if on_progress:
                    on_progress(done, total)
        os.replace(partial, target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DataError(f"cannot download {url} ({reason})",
                        "offline? unzip the MovieLens archive yourself and pass its folder with --path "
                        "(or set TALLREC_MOVIELENS_URL to a mirror)") from None


def _extract(archive: Path, target: Path) -> None:
    """Extract into a staging folder, refusing absolute or ``..`` member names (zip-slip)."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            unsafe = [member for member in bundle.namelist() if _escapes(member)]
            if unsafe:
                archive.unlink()
                raise DataError(f"{archive.name} holds an unsafe path '{unsafe[0]}'; nothing was extracted and the "
                                "archive was deleted", "the archive is not a genuine MovieLens file: check the URL")
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                bundle.extractall(staging)
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile:
        raise DataError(f"{archive} is not a valid zip archive", f"delete {archive} and download again") from None


def _escapes(member: str) -> bool:
    parts = PurePosixPath(member.replace("\\", "/")).parts
    return member.startswith(("/", "\\")) or ".." in parts or bool(parts and ":" in parts[0])
