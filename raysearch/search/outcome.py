"""How a search ended, for the exit code and the closing summary; and the fail-fast rule.

Exit codes of `raysearch run` / `raysearch resume` (README, "Exit codes"):

| code | meaning |
|---|---|
| 0 | the search ran and at least one trial finished (completed, or stopped early by ASHA) |
| 1 | raysearch itself crashed (a bug or an environment problem: see the traceback) |
| 2 | bad input: nothing was started or written |
| 3 | no trial finished: every trial errored or diverged (or fail-fast stopped the search) |
| 130 | interrupted (Ctrl-C, SIGTERM) before every trial ended: `raysearch resume NAME` continues |

`SearchOutcome` is a Tune callback in the driver: it sees each trial end (its error's last
line) and, when the search ends, which trials Tune left unfinished; it writes that to the
results folder. It is also the search's Tune stopper: when the first `search.fail_fast`
trials to end all errored with the same cause, the rest of the budget would most likely
burn the same way, so the search stops.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.stopper import Stopper

from trainables.contract import FINAL, FINISHED, trial_status

EXIT_OK, EXIT_CRASH, EXIT_BAD_INPUT, EXIT_NOTHING_FINISHED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_MAX_LINE = 300


def last_error_line(trial: Any, limit: int = _MAX_LINE) -> str:
    """The last non-empty line of a trial's error (its error file, else the error itself); "" if none."""
    texts: list[str] = []
    try:
        path = getattr(trial, "error_file", None)
        if path and os.path.isfile(path):
            texts.append(Path(path).read_text(errors="replace"))
    except Exception:  # noqa: BLE001 - an unreadable error file must not break the search
        pass
    try:
        error = trial.get_error() if hasattr(trial, "get_error") else None
        if error:
            texts.append(str(error))
    except Exception:  # noqa: BLE001
        pass
    for text in texts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1][:limit]
    return ""


OUTCOME_FILE = "outcome.json"  # in the search's results folder, rewritten whenever the search ends


def error_location(trial: Any) -> str:
    """Where a failed trial's whole traceback stays: `error.txt` in the trial's folder of the
    search's results (Tune's own error file is in a staging folder Ray may clean up)."""
    folder = getattr(trial, "path", None)
    if folder:
        return f"{str(folder).rstrip('/')}/error.txt"
    return str(getattr(trial, "error_file", "") or "")


class SearchOutcome(tune.Callback, Stopper):
    """Records how each trial ended and, when the search ends, writes `outcome.json` into the
    results folder (the CLI reads it for the summary and the exit code; a resumed search's
    restored copy of this callback writes it again). Also Tune's stopper for fail-fast: when the
    first `fail_fast` trials to end all errored with the same cause, the whole search stops."""

    def __init__(self, storage_dir: str, fail_fast: int = 0, planned: int | None = None) -> None:
        self.storage_dir, self.fail_fast, self.planned = str(storage_dir), fail_fast, planned
        self.ended_order: list[str] = []
        self.errors: dict[str, str] = {}
        self.stopped_by_fail_fast = False

    # Tune saves this state with its experiment state and hands it back on `raysearch resume`
    # (the callback object itself comes back as it was when the search started).
    def get_state(self) -> dict[str, Any]:
        return {"ended_order": list(self.ended_order), "errors": dict(self.errors),
                "stopped_by_fail_fast": self.stopped_by_fail_fast}

    def set_state(self, state: dict[str, Any]) -> None:
        self.ended_order = list(state.get("ended_order", []))
        self.errors = dict(state.get("errors", {}))
        self.stopped_by_fail_fast = bool(state.get("stopped_by_fail_fast", False))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.errors[trial.trial_id] = last_error_line(trial) or "unknown error"
        self._ended(trial.trial_id)

    def _ended(self, trial_id: str) -> None:
        if trial_id not in self.ended_order:
            self.ended_order.append(trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        from raysearch.search import storage
        storage.write_text(self.storage_dir, OUTCOME_FILE, json.dumps(self.describe(trials), indent=1))

    def describe(self, trials: list) -> dict[str, Any]:
        from raysearch.search.ledger import ended_trials

        # Trials that ended by themselves: those this callback saw end, and those the ledger
        # recorded ending (after the Tune save this callback's state was restored from).
        by_themselves = set(self.ended_order) | set(ended_trials(self.storage_dir))
        ended = {}
        for trial in trials:
            if trial.status == "ERROR":
                status = "error"
            elif trial.status == "TERMINATED" and trial.trial_id not in by_themselves:
                # Stopped by Tune's clean-up after Ctrl-C, not by its schedule, ASHA or an error:
                # every trial that ends on its own passes through on_trial_complete / on_trial_error.
                status = "stopped" if self.stopped_by_fail_fast else "unfinished"
            elif trial.status == "TERMINATED":
                status = trial_status(trial.last_result)
                if self.stopped_by_fail_fast and not (trial.last_result or {}).get(FINAL):
                    status = "stopped"  # ended by fail-fast, not by its schedule or ASHA
            else:
                status = "unfinished"
            ended[trial.trial_id] = {"status": status}
            if status == "error":
                ended[trial.trial_id]["error"] = self.errors.get(trial.trial_id) or last_error_line(trial) or "unknown error"
                ended[trial.trial_id]["error_file"] = error_location(trial)
        return {"trials": ended, "planned": self.planned, "stopped_by_fail_fast": self.stopped_by_fail_fast}

    # --- the stopper ---------------------------------------------------------------------------

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # single trials end by their own schedule and ASHA

    def stop_all(self) -> bool:
        if self.stopped_by_fail_fast:
            return True
        first = self.ended_order[: self.fail_fast]
        if self.fail_fast <= 0 or len(first) < self.fail_fast:
            return False
        if len({self.errors.get(t) for t in first} - {None}) == 1 and all(t in self.errors for t in first):
            self.stopped_by_fail_fast = True
        return self.stopped_by_fail_fast


def read_outcome(storage_dir: str) -> dict[str, Any] | None:
    from raysearch.search import storage
    text = storage.read_text(str(storage_dir), OUTCOME_FILE)
    return json.loads(text) if text else None


def exit_code(outcome: dict[str, Any] | None) -> int:
    """0 if a trial finished; 3 if none did (or fail-fast stopped the search); 130 if interrupted."""
    if outcome is None:
        return EXIT_INTERRUPTED  # the search never reached its end
    statuses = [t["status"] for t in outcome["trials"].values()]
    if outcome.get("stopped_by_fail_fast"):
        return EXIT_NOTHING_FINISHED
    if "unfinished" in statuses or len(statuses) < (outcome.get("planned") or 0):
        return EXIT_INTERRUPTED  # a trial cut short, or trials the search never started
    return EXIT_OK if any(s in FINISHED for s in statuses) else EXIT_NOTHING_FINISHED


def summary(outcome: dict[str, Any] | None) -> list[str]:
    """The closing lines: counts by status, then one line per distinct error cause."""
    if outcome is None:
        return ["the search stopped before it ended: `raysearch resume NAME` continues it"]
    trials = outcome["trials"]
    counts = Counter(t["status"] for t in trials.values())
    order = ("completed", "early_stopped", "stopped", "diverged", "error", "unfinished")
    parts = [f"{counts[s]} {s.replace('_', ' ')}" for s in order if counts[s]]
    lines = [f"{len(trials)} trials: {', '.join(parts) or 'none'}"]
    causes = Counter(t["error"] for t in trials.values() if t["status"] == "error")
    for cause, n in causes.most_common():
        example = next(t for t in trials.values() if t.get("error") == cause)
        where = f"  (traceback: {example['error_file']} and the trial's MLflow run)" if example.get("error_file") else ""
        lines.append(f"  {n} x {cause}{where}")
    if outcome.get("stopped_by_fail_fast"):
        lines.append("  the search was stopped: its first trials all failed with the same error (search.fail_fast)")
    elif counts["unfinished"] or len(trials) < (outcome.get("planned") or 0):
        lines.append(f"  interrupted after {len(trials)} of {outcome.get('planned') or len(trials)} trials started: "
                     "`raysearch resume NAME` continues it")
    return lines
