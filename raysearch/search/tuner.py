"""Builds and runs the Ray Tune search: OptunaSearch over the objectives, MOASHA (or ASHA)
for early stopping, one trial function per trial (which trains inline or as a Ray Train run).
The only module that builds Tune objects.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import optuna
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from raysearch.search import storage
from raysearch.search.resources import function_resources
from raysearch.experiment.sections import SearchSpec, num_trials_for
from raysearch.experiment.space import default_point, define_by_run, grid_points
from raysearch.experiment.comparison import CellScheduler, cell_points, state_name
from raysearch.search.moasha import DefaultKeepingASHA, MultiObjectiveASHA
from raysearch.experiment.spec import Spec, rung_metrics
from trainables.contract import DIVERGED, EVALUATION, SEED_DIMENSION
from trainables.entry import run_trial


TUNE_TRIAL_ATTR = "tune_trial_id"  # on each Optuna trial: the Tune trial it was asked for


class DivergenceAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna FAIL for a diverged trial, and that a restored search
    brings level with the Optuna journal (raysearch/search/ledger.py).

    A diverged trial reports no objective values; plain OptunaSearch would try to
    `tell` None values, fail, and leave the Optuna trial RUNNING forever.
    """

    def suggest(self, trial_id: str) -> dict | None:
        if getattr(self, "_orphans", None) is None:  # a search's first suggestion (in its journal,
            self.reconcile(known=set(), ended={})   # any trials a driver killed early asked for)
        orphan = self._orphans.pop(0) if self._orphans else None
        if orphan is not None and callable(self._space):
            # Asked for by the killed driver for a trial it never recorded: this trial takes
            # its place (the same configuration, the same Optuna trial), nothing is asked anew.
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphan)
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def reconcile(self, known: set[str], ended: dict[str, tuple[str, dict | None]]) -> None:
        """After `Tuner.restore`, from the ledger: map each Tune trial it knows to its Optuna
        trial (Tune's saved searcher state may predate both), tell Optuna how the trials the
        killed driver recorded as ended ended (if it was killed before telling it), queue
        the Optuna trials no recorded Tune trial owns, and reseed the sampler (its saved random
        state would propose again what it proposed after that save) if the killed driver had
        asked for any trial."""
        self._orphans = []
        trials = self._ot_study.get_trials(deepcopy=False)
        for frozen in trials:
            owner = frozen.user_attrs.get(TUNE_TRIAL_ATTR)
            running = frozen.state == optuna.trial.TrialState.RUNNING
            if owner in known:
                # Optuna's own id of the trial (FrozenTrial has no public accessor for it)
                self._ot_trials.setdefault(owner, optuna.trial.Trial(self._ot_study, frozen._trial_id))
                if owner in ended and running:
                    status, result = ended[owner]
                    self.on_trial_complete(owner, result=result, error=status == "ERROR")
                elif not running:
                    self._completed_trials.add(owner)
            elif running:
                self._orphans.append(frozen._trial_id)
        if any(t.state != optuna.trial.TrialState.WAITING for t in trials):
            # Only once the killed driver had asked: a new study's enqueued points_to_evaluate
            # are WAITING, and reseeding then made a seeded search draw differently every run.
            self._sampler.reseed_rng()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and result.get(DIVERGED):
            result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)


def make_sampler(search: SearchSpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for `search.sampler`, seeded with `search.seed`.

    `grid` returns a RandomSampler: the tuner enqueues `grid_points()` as the points to
    evaluate, and the random sampler only fills the range dimensions. (Optuna's
    GridSampler cannot express conditional dimensions.)
    """
    seed = search.seed
    if search.sampler == "tpe":
        # multivariate+group model the joint and conditional structure; constant_liar keeps
        # concurrent trials from being proposed the same point. All three are "experimental".
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            startup = {} if search.startup_trials is None else {"n_startup_trials": search.startup_trials}
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True, **startup)
    if search.sampler == "nsga2":
        # Small populations: searches here run tens of trials, not thousands.
        population = max(2, min(8, search.num_trials))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if search.sampler in ("random", "grid"):
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {search.sampler!r}; allowed: tpe, nsga2, random, grid")


def base_config(spec: Spec, storage_dir: str) -> dict[str, Any]:
    """The plain-dict part of every trial's config that the search does not sample."""
    return {
        "model": spec.model,
        "trust_remote_code": spec.trust_remote_code,
        "task": spec.task.model_dump(),
        "train": spec.train.model_dump(),
        "adapter": spec.adapter.model_dump(),
        "pruning": spec.pruning.model_dump() if spec.pruning is not None else None,  # trainables/pruning.py
        # `inline`: the spec's one rule for whether a trial trains in its Tune function
        "resources": {**spec.resources.model_dump(), "inline": spec.resources.inline},
        "train_storage": storage.join(storage_dir, "train"),
    }


def file_defaults(spec: Spec) -> dict[str, Any]:
    """What the experiment file itself says for each possible dimension: its `adapter:` and
    `train:` values, `task.target`, and the options of its `adapter.variant` (the variant's own
    defaults where the file sets none)."""
    from raysearch.experiment.checks import registry

    variant = registry().get(spec.adapter.variant)
    options = {name: field.default for name, field in variant.options.model_fields.items()} if variant else {}
    return {**options, **spec.adapter.model_dump(), **spec.train.model_dump(), "target": spec.task.target}


def _new_study(journal: optuna.storages.BaseStorage, name: str) -> bool:
    """Whether the study has no trials yet (a search restarted under its id already has its first)."""
    try:
        return not optuna.load_study(study_name=name, storage=journal).trials
    except KeyError:
        return True


def file_point(spec: Spec) -> dict[str, Any] | None:
    """The experiment file's own configuration as a point of the space, when the search starts
    with it (search.start_with_defaults; never for `grid`): what the study is given first and
    what early stopping lets run to the end."""
    search = spec.search
    if not search.start_with_defaults or search.sampler == "grid" or search.compare:
        return None
    return default_point(search.space, file_defaults(spec)) or None


def first_points(spec: Spec, journal: optuna.storages.BaseStorage) -> list[dict[str, Any]] | None:
    """What the study is given to try first: the grid's points, or the file's own configuration
    (search.start_with_defaults) in a study that has no trials yet."""
    search = spec.search
    if search.compare:  # every trial of a comparison is fixed up front (raysearch/experiment/comparison.py)
        seeds = search.space[SEED_DIMENSION].choice if search.seeds > 1 else [spec.train.seed]
        points = cell_points(search.space, search.compare, search.trials_per_cell, seeds, search.seed)
        return points if _new_study(journal, spec.name) else None
    if search.sampler == "grid":
        return grid_points(search.space)
    point = file_point(spec)
    return [point] if point and _new_study(journal, spec.name) else None


def build_searcher(spec: Spec, storage_dir: str, concurrency: int) -> ConcurrencyLimiter:
    search = spec.search
    journal_file = storage.journal_file(str(storage_dir), spec.name)
    journal_file.parent.mkdir(parents=True, exist_ok=True)
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal_file)))
    searcher = DivergenceAwareOptunaSearch(
        space=define_by_run(search.space),
        metric=list(search.objectives),
        mode=list(search.objectives.values()),
        sampler=make_sampler(search),
        study_name=spec.name,
        storage=journal,
        points_to_evaluate=first_points(spec, journal),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)


def build_scheduler(spec: Spec, storage_dir: str | None = None) -> DefaultKeepingASHA | MultiObjectiveASHA | FIFOScheduler:
    """The search's early stopping. `storage_dir`: where MOASHA and ASHA keep their rungs
    (`moasha.json`, `asha.json`: Tune does not save a scheduler with its experiment state);
    None keeps them in memory. Either scheduler lets the file's own configuration
    (start_with_defaults) run to the end."""
    stopping = spec.search.early_stopping
    if stopping.scheduler == "none":
        return FIFOScheduler()
    if spec.search.compare:  # one scheduler per cell: no trial is judged against another cell's
        return CellScheduler(spec.search.compare,
                             lambda cell: one_scheduler(spec, storage_dir, state_name(cell, stopping.scheduler)))
    return one_scheduler(spec, storage_dir, f"{stopping.scheduler}.json")


def one_scheduler(spec: Spec, storage_dir: str | None, state: str) -> DefaultKeepingASHA | MultiObjectiveASHA:
    """MOASHA or ASHA over the trials it is told of, keeping its rungs in `storage_dir/state`."""
    stopping = spec.search.early_stopping
    # The loop's own evaluation count: a restarted trial continues it, while Tune's
    # training_iteration starts again at 1 when a resumed search restarts the function.
    clock = {"time_attr": EVALUATION, "grace_period": stopping.grace_period,
             "reduction_factor": stopping.reduction_factor, "max_t": 10_000, "brackets": stopping.brackets}
    kept = {"protected": file_point(spec), "state_file": (str(storage_dir), state) if storage_dir is not None else None}
    if stopping.scheduler == "moasha":
        return MultiObjectiveASHA(rung_metrics(spec.search.objectives, stopping), **clock, **kept,
                                  min_rung_size=stopping.min_rung_size)
    return DefaultKeepingASHA(metric=stopping.metric, mode="min" if stopping.metric.endswith("loss") else "max",
                              **clock, **kept)


class PruneFinishedCheckpoints(tune.Callback):
    """Keeps the newest `keep` checkpoints of a finished inline trial, deleting the others.

    Tune is not told to keep only that many (`CheckpointConfig(num_to_keep=None)` for inline
    trials): it deletes old checkpoints as new ones come, but saves its experiment state
    (what `raysearch resume` restores, with each trial's newest checkpoint then) only every
    ≥10 s, so after a driver crash the checkpoint a trial would resume from could already
    be gone (Tune then fails the trial). A finished trial is never resumed, so its older
    checkpoints can go; a running or errored one keeps them all (DESIGN-NOTES.md)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.swept = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # Once per driver: a trial that ended just before a driver crash, before its own
        # on_trial_complete could prune it, comes back from `raysearch resume` as ended.
        if not self.swept:
            self.swept = True
            for trial in trials:
                if trial.status == "TERMINATED":
                    self.prune(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.prune(trial)

    def prune(self, trial: Any) -> None:
        newest = getattr(trial, "checkpoint", None)
        if newest is None:
            return
        from pyarrow import fs

        filesystem, folder = newest.filesystem, newest.path.rstrip("/").rsplit("/", 1)[0]
        found = filesystem.get_file_info(fs.FileSelector(folder))
        checkpoints = sorted(info.path for info in found
                             if info.type == fs.FileType.Directory and info.base_name.startswith("checkpoint_"))
        for path in checkpoints[:-self.keep]:
            filesystem.delete_dir(path)

    def __setstate__(self, state: dict[str, Any]) -> None:  # restored from Tune's state: a new driver sweeps again
        self.keep, self.swept = state["keep"], False


def build_tuner(spec: Spec, storage_dir: str, concurrency: int, callbacks: Sequence[tune.Callback]) -> tune.Tuner:
    from raysearch.search.ledger import RecordingSearchGenerator, TrialLedger
    from raysearch.search.outcome import SearchOutcome

    storage_dir = str(storage_dir)  # a local path or a URI (s3://, gs://, file://): Tune takes both
    # outcome.json, and the fail-fast stopper
    outcome = SearchOutcome(storage_dir, spec.search.fail_fast, planned=num_trials_for(spec.search))
    return tune.Tuner(
        build_trainable(spec, storage_dir),
        tune_config=tune.TuneConfig(
            # records each trial before Optuna or MLflow hear of it (raysearch/search/ledger.py)
            search_alg=RecordingSearchGenerator(build_searcher(spec, storage_dir, concurrency), storage_dir),
            scheduler=build_scheduler(spec, storage_dir),
            num_samples=num_trials_for(spec.search),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=storage_dir,
            callbacks=[TrialLedger(storage_dir), *callbacks, outcome, *([PruneFinishedCheckpoints(spec.train.keep_checkpoints)]
                                              if spec.resources.inline else [])],
            stop=outcome,
            verbose=0,
            # A Ray Train run retries its own workers (trainables/trial.py); an inline
            # trial is retried by Tune, from its last checkpoint.
            failure_config=tune.FailureConfig(max_failures=spec.train.max_failures if spec.resources.inline else 0),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if spec.resources.inline else spec.train.keep_checkpoints),
        ),
    )


def build_trainable(spec: Spec, storage_dir: str) -> Any:
    """The Tune function with the experiment's fixed config; `restore_tuner` rebuilds the same one."""
    return tune.with_resources(
        tune.with_parameters(run_trial, base=base_config(spec, str(storage_dir))), function_resources(spec)
    )


def restore_tuner(spec: Spec, storage_dir: str, retry_errored: bool = False) -> tune.Tuner:
    """The interrupted search at `storage_dir`, continued where it stopped.

    Finished trials are kept, not re-run; unfinished ones continue from their last
    checkpoint: Tune hands an inline trial its own, and a Ray Train run finds its own (the
    trial's TorchTrainer has the same name and storage). Errored ones stay errored, or
    start again with `retry_errored`, from their last checkpoint in the same way (so Tune
    "resumes" an inline one and "restarts" the function of a Ray Train one). The searcher
    (OptunaSearch + its study) and the callbacks (MLflow tracking, progress) come back from
    Tune's saved state.
    """
    inline = spec.resources.inline
    return tune.Tuner.restore(
        storage.tune_path(storage_dir),
        trainable=build_trainable(spec, storage_dir),
        resume_unfinished=True,
        resume_errored=retry_errored and inline,
        restart_errored=retry_errored and not inline,
    )
