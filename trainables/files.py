"""Which files a local dataset folder is read from. No heavy imports: the driver's
preflight (raysearch/preflight.py) uses it before anything starts."""
from __future__ import annotations

from pathlib import Path

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
