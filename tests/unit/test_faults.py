"""Faults inside a trial, the unit-level half: what a failed trial's record says, the GPU
out-of-memory hint, and the data order a resumed trial continues with."""
from __future__ import annotations

import itertools

import pytest
import torch
from ray.train.v2.api.exceptions import WorkerGroupError

from trainables import loop
from trainables.trial import failure_summary, last_line

CONFIG = {"adapter": {"rank": 16}, "train": {"batch_size": 64}, "resources": {"workers_per_trial": 2}}


def test_failure_summary_names_the_worker_exception_and_the_retries():
    remote = ValueError("Traceback (most recent call last):\n  File \"loop.py\", line 3\nValueError: label 7 unknown")
    error = WorkerGroupError("training failed", {1: remote, 0: KeyError("text")})
    assert failure_summary(error, 2) == "worker 0: KeyError: 'text' (after 2 retries; train.max_failures)"
    assert failure_summary(WorkerGroupError("x", {1: remote}), 1) == (
        "worker 1: ValueError: label 7 unknown (after 1 retry; train.max_failures)")
    assert failure_summary(RuntimeError("controller died"), 0) == (
        "RuntimeError: controller died (after no retries; train.max_failures)")
    assert "without limit" in failure_summary(RuntimeError("x"), -1)


def test_last_line_keeps_a_typed_line_and_types_a_bare_one():
    assert last_line(RuntimeError("a\n\nOSError: disk full\n")) == "OSError: disk full"
    assert last_line(RuntimeError("worker died")) == "RuntimeError: worker died"
    assert last_line(RuntimeError("")) == "RuntimeError"


def test_out_of_memory_becomes_an_error_that_says_what_to_lower(monkeypatch):
    def oom(config, session):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79 GiB total)\nmore")

    monkeypatch.setattr(loop, "train", oom)
    with pytest.raises(loop.TrialOutOfMemory) as caught:
        loop.run_loop(CONFIG, session=None)
    message = str(caught.value)
    assert "\n" not in message  # one line: it becomes the run's raysearch.error tag
    for hint in ("train.batch_size=64", "rank 16", "2 worker(s)", "task.gradient_checkpointing",
                 "torch said: CUDA out of memory. Tried to allocate 2.00 GiB"):
        assert hint in message
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)


def test_other_errors_pass_through_unchanged(monkeypatch):
    def broken(config, session):
        raise ValueError("bad label")

    monkeypatch.setattr(loop, "train", broken)
    with pytest.raises(ValueError, match="bad label"):
        loop.run_loop(CONFIG, session=None)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("skip", [0, 3, 5, 11])
def test_a_resumed_trial_sees_the_batches_it_had_not_trained_on(skip, world):
    data = {"labels": torch.arange(22), "input_ids": torch.arange(22).unsqueeze(1)}  # 5 batches of 4 per epoch
    for rank in range(world):
        whole = loop.global_batches(data, 4, rank, world, seed=3)
        expected = list(itertools.islice(whole, skip, skip + 8))
        resumed = list(itertools.islice(loop.global_batches(data, 4, rank, world, seed=3, skip=skip), 8))
        assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(expected, resumed))


def test_last_line_of_a_long_ray_message_is_cut():
    line = last_line(RuntimeError("ActorDiedError: The actor is dead because " + "x" * 500))
    assert line.startswith("ActorDiedError: The actor is dead") and len(line) == 200 and line.endswith("…")
