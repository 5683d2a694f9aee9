"""--download against a local HTTP server: cache, sha256 check, zip-slip refusal, offline message."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from data_builders.build import build_config, build_dataset
from data_builders.download import URL_ENV
from tallrec_cli.core.errors import ConfigError, DataError

U_DATA = "".join(f"{u}\t{i}\t{(u * i) % 5 + 1}\t{880000000 + u * 100 + i}\n" for u in range(1, 4) for i in range(1, 15))
U_ITEM = "".join(f"{i}|Movie {i} (199{i % 10})|01-Jan-1995||http://x|0|1\n" for i in range(1, 15))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1 (stopped after the test) and a fresh download cache."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("TALLREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        yield folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_zip(path: Path, members: dict[str, str]) -> str:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, text in members.items():
            bundle.writestr(name, text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(tmp_path: Path, name: str = "out", **values) -> dict:
    config = build_config("movielens-100k", None, {"download": True, "output": str(tmp_path / name),
                                                   "history_len": 3, **values})
    return build_dataset(config)


def test_download_verifies_caches_and_builds(served, tmp_path, monkeypatch):
    digest = make_zip(served / "ml-100k.zip", {"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM})
    manifest = download(tmp_path, sha256=digest)
    assert manifest["records"] == 3 * 11
    cache = tmp_path / "home" / "downloads"
    assert (cache / "ml-100k.zip").is_file() and (cache / "ml-100k" / "ml-100k" / "u.data").is_file()
    (served / "ml-100k.zip").unlink()  # the second build needs no network
    assert download(tmp_path, "again", sha256=digest)["records"] == 3 * 11


def test_checksum_mismatch_deletes_the_archive(served, tmp_path):
    make_zip(served / "ml-100k.zip", {"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM})
    with pytest.raises(DataError, match="expected 50d2a982"):  # the published ml-100k checksum
        download(tmp_path)
    assert not (tmp_path / "home" / "downloads" / "ml-100k.zip").exists()
    assert not (tmp_path / "out").exists()


def test_zip_slip_is_refused(served, tmp_path):
    digest = make_zip(served / "ml-100k.zip", {"ml-100k/u.data": U_DATA, "../../escaped.txt": "owned"})
    with pytest.raises(DataError, match="unsafe path '../../escaped.txt'"):
        download(tmp_path, sha256=digest)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "home" / "downloads" / "ml-100k").exists()


def test_unpinned_archive_reports_its_hash(served, tmp_path):
    ratings = U_DATA.replace("\t", "::")
    movies = "".join(f"{i}::Movie {i} (1995)::Drama\n" for i in range(1, 15))
    digest = make_zip(served / "ml-1m.zip", {"ml-1m/ratings.dat": ratings, "ml-1m/movies.dat": movies})
    config = build_config("movielens-1m", None, {"download": True, "output": str(tmp_path / "out"), "history_len": 3})
    manifest = build_dataset(config)
    assert any(digest in note for note in manifest["notes"])


def test_offline_download_says_how_to_pass_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TALLREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/")  # discard port: nothing listens
    with pytest.raises(DataError) as failure:
        download(tmp_path)
    assert "cannot download http://127.0.0.1:9/ml-100k.zip" in failure.value.message
    assert "--path" in failure.value.hint
    with pytest.raises(ConfigError, match="only for MovieLens"):
        build_dataset(build_config("bookcrossing", None, {"download": True, "output": str(tmp_path / "bx")}))
