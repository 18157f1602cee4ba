from __future__ import annotations

import io

from rich.console import Console

from raysearch.progress import LiveProgress


def test_the_last_frame_ends_its_line_when_output_is_not_a_terminal():
    """`make demo > log`: the leaderboard printed next starts on a line of its own."""
    out = io.StringIO()
    progress = LiveProgress({"val_accuracy": "max", "adapter_params": "min"}, 2, Console(file=out, width=120))
    progress.setup()
    progress.on_experiment_end([])
    Console(file=out, width=120).print("next table")
    lines = out.getvalue().splitlines()
    assert lines[-1] == "next table" and lines[-2].startswith("└")
