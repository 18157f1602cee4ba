"""Which files a local dataset folder is read from, and the records of a JSON file. No heavy
imports: the driver's preflight (raysearch/experiment/preflight.py) uses it before anything starts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
VALIDATION_STEMS = ("validation", "dev", "val")


def find_split_file(files: list[Path], stems: tuple[str, ...]) -> Path | None:
    """The first file named `<stem>.<supported extension>`, trying `stems` in order."""
    for stem in stems:
        for file in files:
            if file.stem == stem and file.suffix.lower() in SUPPORTED_EXTENSIONS:
                return file
    return None


def source_name(path: str) -> str:
    """A data source's default name in per-source scores: its file (or folder) name up to the
    first dot (`boolq.train.json` -> `boolq`)."""
    return Path(str(path).rstrip("/")).name.split(".")[0] or str(path)


def is_local_source(source: str) -> bool:
    """Whether a dataset source is a local file or folder (not `hf:`, `builtin:` or a URI)."""
    return not source.startswith(("hf:", "builtin:")) and "://" not in source


def split_files(path: Path) -> list[Path]:
    """The files a local dataset is read from: the file itself, or a folder's train/validation files."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file())
    return [f for f in (find_split_file(files, ("train",)), find_split_file(files, VALIDATION_STEMS)) if f is not None]


def read_json_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a .json file (a list, one object, or JSON lines) or a .jsonl file."""
    import json

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{str(path)!r}: expected a JSON list of records (objects) or JSON lines")
    return records
