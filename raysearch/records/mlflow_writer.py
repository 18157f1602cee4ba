"""The search mirrored into MLflow as it runs (a Tune callback on the driver).

One MLflow experiment per search name, one parent run per search
(tag raysearch.role=search), one child run per Tune trial. Child runs are found
again by the tag raysearch.trial_id under their parent, never created twice, so
`raysearch resume` continues the same runs; Ray's MLflowLoggerCallback instead
duplicates runs after a restore and leaves the old ones RUNNING.

Everything goes through MlflowClient with explicit run ids (no fluent
active-run state), and `close()` terminates whatever is still RUNNING, so no
run outlives its search. With `mlflow_reader.py` (which reads the records back) this is the only
module that imports mlflow.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from raysearch.search.outcome import last_error_line
from raysearch.records.plots import write_comparison, write_csv, write_html, write_png
from raysearch.records.ranks import parse as parse_ranks, write_heatmap
from raysearch.records.run_fields import artifact_location, metrics_of, params_of, result_step, scaling_rule, trial_checkpoint
from raysearch.experiment.redaction import redact
from raysearch.records.mlflow_reader import (EXPERIMENT_ARTIFACT, EXPERIMENT_KIND, FINISHED_STATUSES, FRONT_STATUSES, MAX_TAG_CHARS,
                            TAG_ERROR, TAG_EXPERIMENT_KIND, TAG_OBJECTIVES, TAG_PARENT, TAG_PARETO, TAG_REASON, TAG_ROLE,
                            TAG_SEARCH_ID, TAG_STATUS, TAG_TRIAL_ID, cell_table, children, finite, rows_of)
from trainables.contract import (ADAPTER_PARAMS, DIVERGED_STATUS, EFFECTIVE_LORAPLUS_RATIO, RANK_ALLOCATION,
                                 SCALING_EXPONENT, trial_status)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the callback


class MlflowTracking(Callback):
    """Tune callback that mirrors a search into MLflow (parent run + one child per trial)."""

    def __init__(
        self,
        mlflow_uri: str,
        experiment_name: str,
        objectives: dict[str, str],
        search_config: dict,
        parent_run_id: str | None = None,
        experiment_file: str | None = None,
        storage_scheme: str = "",
        search_id: str | None = None,
        compare: list[str] | None = None,
        trial_fields: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {}),  # run_fields.pruning_fields
    ) -> None:
        self.mlflow_uri, self.trial_fields = mlflow_uri, trial_fields  # (params, tags) every trial's run gets
        self.compare = list(compare or [])  # search.compare: the parent run gets the comparison plot
        # Set once per search (not per process): a restored copy of this callback finds
        # the same parent run by this tag, so `raysearch resume` never opens a second one.
        self.search_id = search_id
        self.experiment_file = experiment_file  # the validated experiment as YAML, secrets redacted
        self.storage_scheme = storage_scheme  # "s3", "gs", "file"... of the results; "" for a local path
        self.experiment_name = experiment_name
        self.objectives = dict(objectives)
        self.search_config = dict(search_config)
        self.parent_run_id = parent_run_id
        self.experiment_id: str | None = None
        self._run_ids: dict[str, str] = {}  # trial_id -> child run id
        self._last_results: dict[str, dict] = {}
        self._client_obj: MlflowClient | None = None
        self._logged_through: dict[str, int] = {}  # trial_id -> last step its run holds
        self._effective_logged: set[str] = set()  # run ids that have their scaling_rule
        self._parent_lock = threading.Lock()
        self._opening: Future | None = None  # `setup`'s background ensure_parent

    # Tune pickles the run config (with its callbacks) for `Tuner.restore`: leave the client
    # (and the lock and thread) out.
    def __getstate__(self) -> dict:
        self._wait_opening()  # a copy carries the parent run's id
        state = self.__dict__.copy()
        state["_client_obj"] = None
        state["_logged_through"] = {}  # read again from MLflow by the process that restores it
        state["_parent_lock"] = state["_opening"] = None
        return state

    # `raysearch resume --mlflow-uri` (a moved store): Tune unpickles the callbacks it saved,
    # so the new URI is applied while unpickling. Only the resuming driver sets it.
    uri_override: str | None = None

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_logged_through", {})  # pickled by a version without it
        self.__dict__.setdefault("_effective_logged", set())
        self.__dict__.setdefault("compare", [])
        self.__dict__.setdefault("trial_fields", ({}, {}))  # (params, tags): pickled by a version without them
        self._parent_lock, self._opening = threading.Lock(), None
        if MlflowTracking.uri_override:
            self.mlflow_uri = MlflowTracking.uri_override

    @property
    def _client(self) -> MlflowClient:
        if self._client_obj is None:
            self._client_obj = MlflowClient(tracking_uri=self.mlflow_uri)
        return self._client_obj

    # ---- parent run

    def ensure_parent(self) -> str:
        """Create (or reopen) the parent run and return its id; safe to call any number of
        times, from any thread (one caller creates it, the others wait)."""
        with self._parent_lock:
            return self._ensure_parent()

    def _ensure_parent(self) -> str:
        client = self._client
        if self.experiment_id is None:
            experiment = client.get_experiment_by_name(self.experiment_name)
            self.experiment_id = (
                experiment.experiment_id if experiment else client.create_experiment(
                    self.experiment_name, artifact_location=artifact_location(self.mlflow_uri, self.experiment_name))
            )
            if experiment is None or experiment.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
                # MLflow 3 opens an experiment of unknown kind on its GenAI overview (traces);
                # a fine-tuning experiment opens on its training runs.
                client.set_experiment_tag(self.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        if self.parent_run_id is None and self.search_id:
            self.parent_run_id = self._parent_by_search_id(self.experiment_id)
            if self.parent_run_id:
                self.sweep_stale()
        if self.parent_run_id is None:
            run = client.create_run(self.experiment_id, run_name=f"search-{time.strftime('%Y%m%d-%H%M%S')}")
            self.parent_run_id = run.info.run_id
            params = params_of(self.search_config)
            params["objectives"] = json.dumps(self.objectives)
            client.log_batch(
                self.parent_run_id,
                params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag(TAG_ROLE, "search"), RunTag(TAG_OBJECTIVES, json.dumps(self.objectives)),
                      *([RunTag(TAG_SEARCH_ID, self.search_id)] if self.search_id else [])],
            )
            if self.experiment_file:  # what `raysearch export` rebuilds a trial's experiment from
                client.log_text(self.parent_run_id, redact(self.experiment_file), EXPERIMENT_ARTIFACT)
        elif client.get_run(self.parent_run_id).info.status != "RUNNING":
            client.update_run(self.parent_run_id, status="RUNNING")  # resumed search
        return self.parent_run_id

    def setup(self, **info: Any) -> None:
        """Open the parent run in the background: a new SQLite store spends seconds in MLflow's
        schema migrations, which now overlap the first trial process's start and imports
        (docs/benchmarks.md §1). Every hook that needs the parent waits for it in
        `ensure_parent`, and an error there is raised again by the next call."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raysearch-mlflow")
        self._opening = pool.submit(self.ensure_parent)
        pool.shutdown(wait=False)  # the thread ends when ensure_parent returns

    def _wait_opening(self) -> None:
        """Let `setup`'s thread finish, so nothing creates a parent after `close`."""
        if self._opening is not None:
            try:
                self._opening.result()
            except Exception:  # noqa: BLE001 - reported by the caller's own ensure_parent
                pass

    def _parent_by_search_id(self, experiment_id: str) -> str | None:
        """The parent run an earlier driver of this search recorded (tagged with its search id)."""
        found = self._client.search_runs(
            [experiment_id], filter_string=f"tags.\"{TAG_SEARCH_ID}\" = '{self.search_id}'", max_results=1)
        return found[0].info.run_id if found else None

    def sweep_stale(self) -> int:
        """Close the child runs an interrupted driver left RUNNING (SIGKILL, power loss): KILLED,
        with a reason tag. A trial Tune resumes reopens its run; none is created twice."""
        swept = 0
        for run in children(self._client, self.experiment_id, self.parent_run_id):
            if run.info.status == "RUNNING":
                self._client.set_tag(run.info.run_id, TAG_STATUS, "interrupted")
                self._client.set_tag(run.info.run_id, TAG_REASON, "the search's driver stopped while this trial "
                                     "ran; closed when the search was resumed")
                self._client.set_terminated(run.info.run_id, "KILLED")
                swept += 1
        return swept

    # ---- child runs

    def _find_child(self, trial_id: str) -> Any | None:
        found = self._client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.\"{TAG_TRIAL_ID}\" = '{trial_id}' and tags.\"{TAG_PARENT}\" = '{self.parent_run_id}'",
            max_results=1,
        )
        return found[0] if found else None

    def _child_run_id(self, trial: Any) -> str:
        """The child run of `trial`, created on first sight and reopened when a resumed trial restarts."""
        self.ensure_parent()
        trial_id = str(trial.trial_id)
        if trial_id in self._run_ids:
            return self._run_ids[trial_id]
        client = self._client
        run = self._find_child(trial_id)
        if run is None:
            self._logged_through[trial_id] = -1  # a new run holds no step
            run = client.create_run(
                self.experiment_id,
                run_name=self.run_name(getattr(trial, "config", None) or {}, trial_id),
                tags={TAG_PARENT: self.parent_run_id, TAG_TRIAL_ID: trial_id, TAG_STATUS: "running", **self.trial_fields[1]},
            )
        logged = run.data.params
        shared, own = self.trial_fields[0], params_of(getattr(trial, "config", None) or {})
        params = {k: v for k, v in {**shared, **own}.items() if k not in logged}
        if params:
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        self._run_ids[trial_id] = run.info.run_id
        return run.info.run_id

    def run_name(self, config: Mapping[str, Any], trial_id: str) -> str:
        """`dora r8 a1b2c3d4`: what tells runs apart in MLflow's run table (variant and rank,
        sampled or fixed by the experiment, then the Tune trial id)."""
        def setting(key: str) -> Any:
            return config.get(key, self.search_config.get(f"adapter.{key}"))

        parts = [str(setting("variant") or ""), f"r{setting('rank')}" if setting("rank") is not None else "", trial_id]
        return " ".join(part for part in parts if part)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Once, on a resumed search: trials Tune restored as ended whose run the stopped
        driver never closed (it died between the two records, or while closing it: then the
        run has its status tag but is KILLED) are closed now, as they ended."""
        if getattr(self, "_reconciled", False):
            return
        self._reconciled = True
        if any(str(getattr(trial, "status", "")) in ("TERMINATED", "ERROR") for trial in trials):
            self.ensure_parent()  # a resumed search: _find_child needs the experiment
        for trial in trials:
            state = str(getattr(trial, "status", ""))
            run = self._find_child(str(trial.trial_id)) if state in ("TERMINATED", "ERROR") else None
            unclosed = run is not None and (run.data.tags.get(TAG_STATUS) in ("interrupted", "running")
                                            or run.info.status not in ("FINISHED", "FAILED"))
            if unclosed:
                (self.on_trial_complete if state == "TERMINATED" else self.on_trial_error)(iteration, trials, trial)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._child_run_id(trial)
        run = self._client.get_run(run_id)
        if run.info.status != "RUNNING":
            self._client.update_run(run_id, status="RUNNING")  # a resumed trial continues its run
        if run.data.tags.get(TAG_STATUS) == "interrupted":
            self._client.set_tag(run_id, TAG_REASON, "interrupted when the search's driver stopped; "
                                 "continued by raysearch resume")
        self._client.set_tag(run_id, TAG_STATUS, "running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self._child_run_id(trial)
        self._last_results[str(trial.trial_id)] = dict(result)
        self._log_effective(run_id, result)
        metrics = metrics_of(result, extra_keys=self.objectives)
        if not metrics:
            return
        step, now, trial_id = result_step(result), int(time.time() * 1000), str(trial.trial_id)
        if step <= self._last_logged_step(trial_id, run_id):
            # A restarted trial (killed process, retried error, resumed search) trains again
            # from the newest checkpoint the driver knew of, or from the start when it knew
            # none: steps its run already shows come again, with the same values. Log each once.
            return
        self._client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        self._logged_through[trial_id] = step

    def _log_effective(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Once per run: what its variant applied, whatever was sampled (`scaling_rule`,
        `effective_loraplus_ratio`), so runs of different variants group and filter alike."""
        if run_id in self._effective_logged or result.get(SCALING_EXPONENT) is None:
            return
        params = {"scaling_rule": scaling_rule(float(result[SCALING_EXPONENT]))}
        if result.get(EFFECTIVE_LORAPLUS_RATIO) is not None:
            params[EFFECTIVE_LORAPLUS_RATIO] = f"{float(result[EFFECTIVE_LORAPLUS_RATIO]):g}"
        self._client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])  # same values on a rerun
        self._effective_logged.add(run_id)

    def _last_logged_step(self, trial_id: str, run_id: str) -> int:
        """The last step `run_id` holds; read from MLflow once per run this driver reopens."""
        if trial_id not in self._logged_through:
            history = self._client.get_metric_history(run_id, ADAPTER_PARAMS)  # in every report
            self._logged_through[trial_id] = max((m.step for m in history), default=-1)
        return self._logged_through[trial_id]

    def _last_result(self, trial: Any) -> dict:
        return getattr(trial, "last_result", None) or self._last_results.get(str(trial.trial_id), {})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._child_run_id(trial)
        status = trial_status(self._last_result(trial))
        self._client.set_tag(run_id, TAG_STATUS, status)
        self._log_adapter(run_id, trial_checkpoint(trial, self._last_result(trial), self.storage_scheme))
        self._log_ranks(run_id, self._last_result(trial))
        self._client.set_terminated(run_id, "FAILED" if status == DIVERGED_STATUS else "FINISHED")
        self._update_pareto_tags()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._child_run_id(trial)
        self._client.set_tag(run_id, TAG_STATUS, "error")
        message = last_error_line(trial, MAX_TAG_CHARS)
        if message:
            self._client.set_tag(run_id, TAG_ERROR, message)
        self._client.set_terminated(run_id, "FAILED")
        self._update_pareto_tags()

    def _log_adapter(self, run_id: str, checkpoint: Any) -> None:
        """Log the exported adapter held in the trial's final checkpoint."""
        if checkpoint is None:
            return
        try:
            with checkpoint.as_directory() as directory:
                adapter = Path(directory, "adapter")
                if adapter.is_dir():
                    self._client.log_artifacts(run_id, str(adapter), artifact_path="adapter")
        except Exception as error:  # noqa: BLE001 - losing an artifact must not end the search
            log.warning("could not log the adapter of run %s: %s", run_id, error)

    def _log_ranks(self, run_id: str, result: Mapping[str, Any]) -> None:
        """The trial's last per-module rank allocation: ranks.json and a layers × modules heatmap."""
        allocation = result.get(RANK_ALLOCATION)
        if not allocation:
            return
        try:
            ranks = parse_ranks(allocation)
            with tempfile.TemporaryDirectory() as out:
                Path(out, "ranks.json").write_text(json.dumps(ranks, indent=1))
                write_heatmap(Path(out, "ranks.png"), ranks, title=f"live ranks at step {result_step(result)}")
                self._client.log_artifacts(run_id, out, artifact_path="ranks")
        except Exception as error:  # noqa: BLE001 - a missing plot must not end the search
            log.warning("could not log the rank allocation of run %s: %s", run_id, error)

    def _update_pareto_tags(self) -> None:
        runs = children(self._client, self.experiment_id, self.ensure_parent())
        for row in rows_of(runs, self.objectives):
            self._client.set_tag(row["run_id"], TAG_PARETO, "true" if row["pareto"] else "false")

    # ---- end of the search

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        parent = self.ensure_parent()
        rows = rows_of(children(self._client, self.experiment_id, parent), self.objectives)
        finished = [r for r in rows if r["status"] in FINISHED_STATUSES]
        with tempfile.TemporaryDirectory() as out:
            write_csv(Path(out, "pareto.csv"), finished, self.objectives)
            write_png(Path(out, "pareto.png"), finished, self.objectives)
            write_html(Path(out, "pareto.html"), finished, self.objectives)
            if self.compare:
                first, sense = next(iter(self.objectives.items()))
                table = cell_table(rows, self.compare, first, sense)
                write_comparison(Path(out), table, self.compare, first)
            self._client.log_artifacts(parent, out)
        first, sense = next(iter(self.objectives.items()))
        # best_* as for the front: a stopped trial's partial-training value is no result of the search
        values = [r[first] for r in finished
                  if r["status"] in FRONT_STATUSES and r[first] is not None and finite(r[first])]
        metrics = {"n_trials": float(len(rows)), "pareto_size": float(sum(r["pareto"] for r in rows))}
        if values:
            metrics[f"best_{first}"] = float(max(values) if sense == "max" else min(values))
        now = int(time.time() * 1000)
        self._client.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        self.close("FINISHED")

    def close(self, status: str = "FINISHED") -> None:
        """Terminate every run of this search still RUNNING. Idempotent; call it in a `finally`.

        Children without a final status become KILLED with raysearch.status=interrupted;
        the parent gets `status` ("FINISHED", "FAILED" or "KILLED").
        """
        self._wait_opening()
        client = self._client
        if self.parent_run_id is None and self.search_id:  # a resumed search: its parent by tag
            experiment = client.get_experiment_by_name(self.experiment_name)
            self.parent_run_id = self._parent_by_search_id(experiment.experiment_id) if experiment else None
        if self.parent_run_id is None:
            return
        if self.experiment_id is None:
            self.experiment_id = client.get_run(self.parent_run_id).info.experiment_id
        for run in children(client, self.experiment_id, self.parent_run_id):
            if run.info.status != "RUNNING":
                continue
            if run.data.tags.get(TAG_STATUS, "running") == "running":
                # Not an error of the trial's: the search stopped under it (Ctrl-C, or the driver
                # failed). `raysearch resume` continues it, as for a killed driver (sweep_stale).
                client.set_tag(run.info.run_id, TAG_STATUS, "interrupted")
                client.set_tag(run.info.run_id, TAG_REASON, "the search stopped before this trial ended; "
                               "raysearch resume continues it")
            client.set_terminated(run.info.run_id, "KILLED")
        if client.get_run(self.parent_run_id).info.status == "RUNNING":
            client.set_terminated(self.parent_run_id, status)


