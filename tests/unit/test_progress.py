from __future__ import annotations

import io

from rich.console import Console

from raysearch.search.progress import LiveProgress


def test_the_last_frame_ends_its_line_when_output_is_not_a_terminal():
    """`make demo > log`: the leaderboard printed next starts on a line of its own."""
    out = io.StringIO()
    progress = LiveProgress({"val_accuracy": "max", "adapter_params": "min"}, 2, Console(file=out, width=120))
    progress.setup()
    progress.on_experiment_end([])
    Console(file=out, width=120).print("next table")
    lines = out.getvalue().splitlines()
    assert lines[-1] == "next table" and lines[-2].startswith("└")


def test_the_live_front_and_best_are_the_completed_trials():
    """Issue 18: a trial stopped early by the scheduler (partial training) counts as stopped, but neither its
    value is the best nor is it on the front, even when it beats every completed trial."""
    progress = LiveProgress({"val_accuracy": "max", "adapter_params": "min"}, 3, Console(file=io.StringIO()))
    progress.status = {"a": "completed", "b": "completed", "s": "early_stopped"}
    progress.last = {"a": {"val_accuracy": 0.8, "adapter_params": 2000},
                     "b": {"val_accuracy": 0.7, "adapter_params": 1000},
                     "s": {"val_accuracy": 0.95, "adapter_params": 100}}
    cells = {column.header: column._cells[0] for column in progress.render().columns}
    assert cells["stopped early"] == "1" and cells["completed"] == "2"
    assert cells["best val_accuracy (completed)"] == "0.8" and cells["Pareto size"] == "2"
