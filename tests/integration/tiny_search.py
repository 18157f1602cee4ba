"""The tiny experiment file integration searches run (the tiny model, few examples, few steps),
and what their inline trials leave in Tune's trial folders."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_experiment(
    path: Path,
    model_dir: Path,
    *,
    name: str,
    search: dict[str, Any],
    train_examples: int = 96,
    eval_examples: int = 48,
    eval_every_steps: int = 4,
    **sections: Any,
) -> Path:
    """Write an experiment on `builtin:demo` (`sections` add or replace top-level sections)."""
    data = {
        "name": name,
        "model": str(model_dir),
        "task": {"dataset": "builtin:demo", "max_length": 24, "max_train_examples": train_examples,
                 "max_eval_examples": eval_examples},
        "train": {"epochs": 1, "batch_size": 8, "lr": 5e-3, "eval_every_steps": eval_every_steps},
        "search": search,
        **sections,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def checkpoint_step(checkpoint_dir: str, eval_every: int) -> int:
    """The step an inline trial's checkpoint folder holds. Tune numbers the folders
    checkpoint_000000, 1, ... in report order and the trial reports (and checkpoints) every
    `eval_every` steps, so checkpoint i holds step eval_every * (i + 1), until a retry or a
    resume renumbers them."""
    return eval_every * (int(checkpoint_dir.rsplit("_", 1)[1]) + 1)


def continuation_problems(steps: list[int], resumed: dict[int, float], steps_at_kills: list[int],
                          eval_every: int, total: int, in_flight: int = 0, train_run: bool = False) -> list[str]:
    """What is wrong with one trial's record after kills: `steps`, the steps its run logged
    (val_loss); `resumed`, step -> `resumed_from_step` logged there; `steps_at_kills`, its run's
    last logged step at each kill that stopped it. Each step must be logged once, in order, up to
    the last; after a kill at step s (once it had a checkpoint), the next step logged must say
    the trial continued from the checkpoint the driver had registered: s, or s - eval_every when
    the kill fell between a report and its checkpoint. `in_flight`: reports the killed process
    had already sent when its last logged step was read (the driver logs them after), which
    may come before the first one of the restarted process. Every report of a process that
    started from a checkpoint says so (`resumed_from_step`), so such an in-flight report carries
    the killed process's own value, from the kill before; the restarted process's first report
    is the first in the window whose value differs (or, when both processes started from the
    same checkpoint, any one of them); when the in-flight reports were the trial's last, the
    restarted process logs nothing.

    `train_run`: a Ray Train run keeps its own checkpoints, and a restarted run continues from
    its newest one, which may be newer than the last step the killed driver logged: the steps
    in between were evaluated while no driver listened and are never logged (a gap, docs/
    faults.md). Then each logged step must still be once and in order, the last one logged,
    and after a kill the trial must continue from a checkpoint at or after the driver's."""
    problems = []
    every = list(range(eval_every, total + 1, eval_every))
    if train_run:
        if steps != sorted(set(steps)) or not set(steps) <= set(every) or steps[-1:] != [total]:
            problems.append(f"steps logged {steps}: not once each, in order, up to {total}")
    elif steps != every:
        problems.append(f"steps logged {steps}, not each once up to {total}")
    for last in steps_at_kills:
        later = [step for step in steps if step > last]
        if last < 2 * eval_every or not later:
            continue  # no checkpoint to continue from yet, or it had finished
        own = resumed.get(last)  # what the killed process's own reports said, if it had been restarted
        if len(later) <= in_flight and all(resumed.get(step) == own for step in later):
            continue  # the killed process's in-flight reports ended the trial: the restart logged nothing
        window = [step for step in later[: in_flight + 1] if step in resumed]
        first = next((step for step in window if resumed[step] != own), window[-1] if window else None)
        if first is None:
            problems.append(f"started again from step 0 after a kill at step {last}")
        elif not last - eval_every <= resumed[first] <= (first - eval_every if not train_run else first):
            problems.append(f"after a kill at step {last}, continued from step {resumed[first]:g}")
    return problems
