"""Where a search's results live, and whether every node of a cluster can reach them.

`storage` (the experiment's `storage:` or `--storage`) is one of three kinds:

- a plain path (`./raysearch_results`): this machine's disk. Right for one machine;
  refused on a multi-node cluster, where each node would write to its own disk.
- `file:///mnt/shared/raysearch`: a shared filesystem (NFS, EFS, Lustre...) mounted
  at the same path on every node. raysearch cannot see that a plain path is shared,
  so the `file://` form is how you say it.
- `s3://bucket/prefix`, `gs://bucket/prefix`, or any URI pyarrow opens: an object store.

Ray Tune and Ray Train write results and checkpoints there themselves (pyarrow
filesystems). The Optuna journal is written only by the driver, through a file lock,
which object stores do not have: with an object store it lives on the driver's disk
(`RAYSEARCH_JOURNAL_DIR`, default `~/.raysearch/journals/<name>/optuna.journal`) and is
copied to `<storage>/<name>/optuna.journal` when the search ends. Otherwise it is
written in place, `<storage>/<name>/optuna.journal`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

LOCAL, SHARED_FS, OBJECT_STORE = "local path", "shared filesystem", "object store"
JOURNAL = "optuna.journal"
# Written into `<storage>/<name>/` when a search starts; `raysearch resume NAME` reads them.
EXPERIMENT_FILE = "experiment.yaml"  # the validated experiment (credentials redacted)
SEARCH_FILE = "search.json"  # {"search_id": ...}: the tag that finds the MLflow parent run again
# MLflow stores that are a file on the driver's disk; every other scheme is a server or database.
_MLFLOW_FILE_SCHEMES = ("", "file", "sqlite")


def kind(location: str) -> str:
    """LOCAL, SHARED_FS (`file://`) or OBJECT_STORE (any other URI scheme)."""
    if "://" not in location:
        return LOCAL
    return SHARED_FS if location.startswith("file://") else OBJECT_STORE


def local_path(location: str) -> Path | None:
    """The path on this machine for a plain path or `file://` URI; None for an object store."""
    if kind(location) == LOCAL:
        return Path(location)
    if kind(location) == SHARED_FS:
        return Path(urlparse(location).path)
    return None


def join(location: str, *parts: str) -> str:
    """`location/part/...`, keeping a URI a URI (Path() would turn `s3://b` into `s3:/b`)."""
    if kind(location) == LOCAL:
        return str(Path(location, *parts))
    return "/".join([location.rstrip("/"), *parts])


def tune_path(storage_dir: str) -> str:
    """The Tune experiment folder of a search (what `Tuner.restore` reads)."""
    return join(str(storage_dir), "tune")


def search_dir(storage_root: str, name: str) -> str:
    """Where search `name` keeps its results: `<storage>/<name>`, a local path made absolute
    (Ray Tune needs one), a URI kept a URI. The one place this is decided."""
    if "://" in storage_root:
        return f"{storage_root.rstrip('/')}/{name}"
    return str(Path(storage_root).expanduser().resolve() / name)


def _filesystem(location: str):
    import pyarrow.fs  # imported late: only object stores need it, and it is slow to import

    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except ValueError as error:  # pyarrow's ArrowInvalid: unknown scheme, malformed URI, no such bucket
        raise OSError(f"cannot open {location}: {error}") from None


def exists(location: str) -> bool:
    path = local_path(location)
    if path is not None:
        return path.exists()
    import pyarrow.fs

    fs, fs_path = _filesystem(location)
    return fs.get_file_info(fs_path).type != pyarrow.fs.FileType.NotFound


def delete(location: str) -> None:
    path = local_path(location)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, fs_path = _filesystem(location)
    fs.delete_dir(fs_path)


def make_dirs(location: str) -> None:
    path = local_path(location)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    # Object stores have no folders to create; Tune writes the keys it needs.


def journal_file(storage_dir: str, name: str) -> Path:
    """Where the driver writes the Optuna journal of search `name` (see the module docstring)."""
    path = local_path(storage_dir)
    if path is not None:
        return path / JOURNAL
    root = Path(os.environ.get("RAYSEARCH_JOURNAL_DIR", "~/.raysearch/journals")).expanduser()
    return root / name / JOURNAL


def save_journal(journal: Path, storage_dir: str) -> None:
    """Copy a driver-side journal next to the results in an object store (no-op otherwise)."""
    if kind(storage_dir) != OBJECT_STORE or not journal.exists():
        return
    fs, fs_path = _filesystem(storage_dir)
    with fs.open_output_stream(f"{fs_path.rstrip('/')}/{JOURNAL}") as out:
        out.write(journal.read_bytes())


def mlflow_file(mlflow_uri: str) -> Path | None:
    """The file (or folder) of a file-based MLflow store; None for a server or database."""
    scheme = urlparse(mlflow_uri).scheme
    if scheme not in _MLFLOW_FILE_SCHEMES or mlflow_uri == "databricks":
        return None
    if scheme == "sqlite":  # sqlite:///relative.db, sqlite:////absolute.db
        return Path(mlflow_uri[len("sqlite:///"):])
    return Path(urlparse(mlflow_uri).path) if scheme == "file" else Path(mlflow_uri)


def multi_node_problems(storage: str, mlflow_uri: str) -> list[str]:
    """Why results and tracking would be lost or split on a multi-node cluster (empty: fine).

    Storage must be a shared filesystem or an object store. MLflow must be a server
    (http(s)://, databricks, a database URI), or a file on the shared filesystem that
    `storage` names: only the driver writes MLflow, but its disk may be gone with the cluster.
    """
    problems = []
    if kind(storage) == LOCAL:
        problems.append(
            f"storage = {storage!r} is a path on this node's disk. Use an object store "
            "(--storage s3://BUCKET/PREFIX or gs://BUCKET/PREFIX) or a shared filesystem mounted on "
            "every node, written as a file:// URI (--storage file:///mnt/shared/raysearch)."
        )
    database = mlflow_file(mlflow_uri)
    shared_root = local_path(storage) if kind(storage) == SHARED_FS else None
    if database is not None and not (shared_root is not None and _is_under(database, shared_root)):
        problems.append(
            f"tracking.mlflow_uri = {mlflow_uri!r} is a file on the driver's disk. Use an MLflow server "
            "(--mlflow-uri http://HOST:5000) or a database URI (postgresql://...), or put the file on the "
            "shared filesystem given as storage (sqlite:////mnt/shared/raysearch/mlflow.db)."
        )
    return problems


def _is_under(path: Path, root: Path) -> bool:
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return path == root or root in path.parents


def write_text(location: str, name: str, text: str) -> None:
    """Write `location/name` whole (a local folder, `file://` or an object store). Every file
    raysearch writes or rewrites goes through here: a reader, or a process killed mid-write,
    sees the old text or the new one, never a part (a local file: temporary file, fsync,
    rename; an object store: one PUT)."""
    folder = local_path(location)
    if folder is None:
        fs, fs_path = _filesystem(location)
        with fs.open_output_stream(f"{fs_path.rstrip('/')}/{name}") as out:
            out.write(text.encode())
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, folder / name)
    except BaseException:  # killed (or failed) before the rename: the old file stands, no litter
        Path(temporary).unlink(missing_ok=True)
        raise


def read_text(location: str, name: str) -> str | None:
    """The text of `location/name`, or None when there is no such file."""
    path = local_path(location)
    if path is not None:
        return (path / name).read_text() if (path / name).is_file() else None
    import pyarrow.fs

    fs, fs_path = _filesystem(location)
    key = f"{fs_path.rstrip('/')}/{name}"
    if fs.get_file_info(key).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(key) as stream:
        return stream.read().decode()


def list_names(location: str, suffix: str = "") -> list[str]:
    """The names of the files directly in `location` that end with `suffix`."""
    path = local_path(location)
    if path is not None:
        return sorted(p.name for p in path.glob(f"*{suffix}") if p.is_file()) if path.is_dir() else []
    import pyarrow.fs

    fs, fs_path = _filesystem(location)
    found = fs.get_file_info(pyarrow.fs.FileSelector(fs_path.rstrip("/"), allow_not_found=True))
    return sorted(info.base_name for info in found
                  if info.type == pyarrow.fs.FileType.File and info.base_name.endswith(suffix))


def delete_file(location: str, name: str) -> None:
    """Remove `location/name` if it is there."""
    path = local_path(location)
    if path is not None:
        (path / name).unlink(missing_ok=True)
        return
    import pyarrow.fs

    fs, fs_path = _filesystem(location)
    key = f"{fs_path.rstrip('/')}/{name}"
    if fs.get_file_info(key).type != pyarrow.fs.FileType.NotFound:
        fs.delete_file(key)
