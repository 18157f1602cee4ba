"""Every state file raysearch rewrites is replaced whole (issue 29): a process killed in the
middle of a rewrite leaves the old file, and the next start reads it.

The kill is simulated: while `killed_mid_write()` is active, every file opened for writing
takes the first half of what it is given and then raises `Killed`, as a SIGKILL stops a
write part-way. A plain `open(path, "w")` would leave the half-written file behind."""
from __future__ import annotations

import builtins
import contextlib
import io
import json
import pickle
from typing import Iterator

import pytest
from test_ledger import entry, make_trial, save_tune_state, saved
from test_moasha import SENSES, report
from test_outcome import FakeTrial

from raysearch.search import storage
from raysearch.search.ledger import read_records, reconcile, write_record
from raysearch.search.moasha import MultiObjectiveASHA
from raysearch.search.outcome import SearchOutcome, read_outcome


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (a BaseException, so no `except Exception` eats it)."""


class TornFile:
    def __init__(self, handle) -> None:
        self._handle = handle

    def write(self, text):
        self._handle.write(text[: len(text) // 2])
        self._handle.flush()
        raise Killed("killed in the middle of a write")

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self) -> "TornFile":
        return self

    def __exit__(self, *exc) -> bool:
        self._handle.close()
        return False


@contextlib.contextmanager
def killed_mid_write() -> Iterator[None]:
    # io.open is what pathlib, os.fdopen and json's callers reach; builtins.open is the same function
    real_io, real_builtin = io.open, builtins.open

    def opener(file, mode="r", *args, **kwargs):
        handle = real_io(file, mode, *args, **kwargs)
        return TornFile(handle) if any(flag in mode for flag in "wax+") else handle

    io.open = builtins.open = opener
    try:
        yield
    finally:
        io.open, builtins.open = real_io, real_builtin


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_the_simulated_kill_does_tear_a_plain_write(tmp_path):
    """The harness itself: a plain rewrite under it leaves half a file (what the tests below rule out)."""
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"old": True}))
    with pytest.raises(Killed), killed_mid_write():
        path.write_text(json.dumps({"new": list(range(10))}))
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text())


def test_a_write_killed_half_way_leaves_the_old_file_and_no_temporary_one(tmp_path):
    storage.write_text(str(tmp_path), "state.json", json.dumps({"old": True}))
    with pytest.raises(Killed), killed_mid_write():
        storage.write_text(str(tmp_path), "state.json", json.dumps({"new": list(range(10))}))
    assert json.loads((tmp_path / "state.json").read_text()) == {"old": True}
    assert leftovers(tmp_path) == []


def test_resume_killed_while_rewriting_tunes_experiment_state_can_resume_again(tmp_path):
    results = tmp_path / "search"
    behind, unseen = make_trial(tmp_path, "behind01"), make_trial(tmp_path, "unseen02")
    path = save_tune_state(results, [behind])
    before = path.read_text()
    behind.update_last_result({"step": 8, "val_loss": 0.5})
    for trial in (behind, unseen):
        write_record(str(results), {"trial_id": trial.trial_id, "state": entry(trial)})

    with pytest.raises(Killed), killed_mid_write():
        reconcile(str(results))
    assert path.read_text() == before and leftovers(path.parent) == []

    assert reconcile(str(results)) == {"added": ["unseen02"], "advanced": ["behind01"], "ended": []}
    assert set(saved(path)) == {"behind01", "unseen02"}


def test_a_trial_record_rewritten_when_killed_keeps_its_last_whole_version(tmp_path):
    write_record(str(tmp_path), {"trial_id": "t1", "state": ["a", "b"]})
    with pytest.raises(Killed), killed_mid_write():
        write_record(str(tmp_path), {"trial_id": "t1", "state": ["c", "d"], "ended": "TERMINATED"})
    assert read_records(str(tmp_path)) == {"t1": {"trial_id": "t1", "state": ["a", "b"]}}


def test_moashas_rungs_survive_a_kill_during_their_rewrite(tmp_path):
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2, state_file=(str(tmp_path), "moasha.json"))
    pickled = pickle.dumps(scheduler)  # what tuner.pkl holds
    report(scheduler, "t1", 1, 0.6, 100)
    with pytest.raises(Killed), killed_mid_write():
        report(scheduler, "t2", 1, 0.7, 200)
    assert json.loads((tmp_path / "moasha.json").read_text())["brackets"][0]["1"] == {"t1": [0.6, 100.0]}
    resumed = pickle.loads(pickled)  # a resumed search reads the rungs from the file
    assert resumed.rungs[1] == {"t1": [0.6, 100.0]} and leftovers(tmp_path) == []

    checkpoint = tmp_path / "scheduler.json"  # Tune's own save of a scheduler
    scheduler.save(str(checkpoint))
    with pytest.raises(Killed), killed_mid_write():
        report(scheduler, "t3", 1, 0.8, 300)  # its rungs change; then Tune saves again, and is killed
    with pytest.raises(Killed), killed_mid_write():
        scheduler.save(str(checkpoint))
    restored = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    restored.restore(str(checkpoint))
    assert set(restored.rungs[1]) == {"t1", "t2"}


def test_the_outcome_file_survives_a_kill_during_its_rewrite(tmp_path):
    first = SearchOutcome(str(tmp_path), planned=1)
    done = FakeTrial("t1", "TERMINATED")
    first.on_trial_complete(0, [], done)
    first.on_experiment_end([done])
    before = read_outcome(str(tmp_path))
    again = SearchOutcome(str(tmp_path), planned=2)  # a resumed search ends with one more trial
    failed = FakeTrial("t2", "ERROR", error="Traceback ...\nValueError: boom")
    again.on_trial_complete(0, [], done)
    again.on_trial_error(0, [], failed)
    with pytest.raises(Killed), killed_mid_write():
        again.on_experiment_end([done, failed])
    assert read_outcome(str(tmp_path)) == before and leftovers(tmp_path) == []
