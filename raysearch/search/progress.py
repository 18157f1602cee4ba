"""Live terminal view of a running search (rich), fed by Tune's callback hooks."""
from __future__ import annotations

from typing import Any

from ray import tune
from rich.console import Console
from rich.live import Live
from rich.table import Table

from raysearch.search.outcome import error_location, last_error_line
from trainables.contract import trial_status
from raysearch.records.pareto import pareto_table


class LiveProgress(tune.Callback):
    """Trials done / running / stopped / diverged, best so far and Pareto size."""

    def __init__(self, objectives: dict[str, str], num_trials: int, console: Console | None = None) -> None:
        self.objectives = objectives
        self.num_trials = num_trials
        self.console = console or Console()
        self.status: dict[str, str] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with the experiment state; a terminal is not picklable.
        return {**self.__dict__, "console": None, "live": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.console = Console()

    def setup(self, **info: Any) -> None:
        self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
        self.live.start()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.status[trial.trial_id] = "running"
        self.refresh()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.last[trial.trial_id] = result
        self.refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.status[trial.trial_id] = trial_status(self.last.get(trial.trial_id))
        self.log_line(trial)
        self.refresh()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.status[trial.trial_id] = "error"
        # Always one line, on a terminal too (printed above the live table): the cause and
        # where the whole traceback is.
        where = f" (traceback: {error_location(trial)})" if error_location(trial) else ""
        self.console.print(f"trial {trial.trial_id} error: {last_error_line(trial) or 'unknown error'}{where}",
                           highlight=False, markup=False, soft_wrap=True)
        self.refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.refresh()
        if self.live is not None:
            self.live.stop()
            self.live = None
            if not self.console.is_terminal:
                self.console.line()  # rich ends the last frame with a newline on a terminal only

    def log_line(self, trial: Any) -> None:
        """Without a terminal (CI, logs) the live table is not redrawn: print one line per trial."""
        if self.console.is_terminal:
            return
        result = self.last.get(trial.trial_id, {})
        shown = ", ".join(f"{k}={result[k]:.4g}" for k in self.objectives if isinstance(result.get(k), (int, float)))
        params = ", ".join(f"{k}={v}" for k, v in sorted(trial.config.items()))
        self.console.print(f"trial {trial.trial_id} {self.status[trial.trial_id]}: {params} -> {shown}",
                           highlight=False, soft_wrap=True)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())

    def render(self) -> Table:
        counts = {s: list(self.status.values()).count(s) for s in ("running", "completed", "early_stopped", "diverged", "error")}
        # Best and front over the trials that ran to the end only: a trial stopped early by the scheduler
        # reported a partial-training value, which must not head the table nor join the front.
        completed = pareto_table([r for tid, r in self.last.items() if self.status.get(tid) == "completed"],
                                 self.objectives)
        first, sense = next(iter(self.objectives.items()))
        best = (max if sense == "max" else min)((r[first] for r in completed), default=None)
        front = sum(r["pareto"] for r in completed)
        table = Table(title="raysearch", show_header=True)
        for col in ("trials", "running", "completed", "stopped early", "diverged", "error", f"best {first} (completed)",
                    "Pareto size"):
            table.add_column(col, justify="right")
        table.add_row(
            f"{len(self.status)}/{self.num_trials}", str(counts["running"]), str(counts["completed"]),
            str(counts["early_stopped"]), str(counts["diverged"]), str(counts["error"]),
            "-" if best is None else f"{best:.4g}", str(front),
        )
        return table
