"""What a trial reserves and how many run at once, and Ray started (one machine) or joined
(a cluster, through RAY_ADDRESS) with the concurrency that fits it."""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import ray

from raysearch.search import storage
from raysearch.search.cluster import ClusterInfo, ClusterSetupError, check_address, describe_cluster
from raysearch.experiment.spec import DEFAULT_STORAGE, Spec

# A Tune function that starts a Ray Train run only waits on TorchTrainer.fit(); the
# workers hold the real CPUs/GPUs. Each concurrent trial gets one extra logical CPU on a
# local Ray for its function and Train controller (see DESIGN-NOTES.md, "Resources").
# An inline trial's function is its worker and holds the worker's CPUs/GPUs itself.
TRIAL_FUNCTION_RESOURCES = {"cpu": 1}


def function_resources(spec: Spec) -> dict[str, float]:
    """What a trial's Tune function reserves."""
    resources = spec.resources
    if not resources.inline:
        return dict(TRIAL_FUNCTION_RESOURCES)
    held = {"cpu": resources.cpus_per_worker}
    if resources.gpus_per_worker > 0:
        held["gpu"] = resources.gpus_per_worker
    return held


def extra_function_cpus(spec: Spec) -> float:
    """CPUs a trial's Tune function holds beyond its workers' (0 when it trains inline)."""
    return 0 if spec.resources.inline else TRIAL_FUNCTION_RESOURCES["cpu"]


def worker_cpus(spec: Spec) -> float:
    return spec.resources.workers_per_trial * spec.resources.cpus_per_worker


def effective_concurrency(spec: Spec, cluster_cpus: float) -> int:
    """`max_concurrent`, capped so every running trial's workers fit on the CPUs."""
    fits = int(cluster_cpus // worker_cpus(spec)) if worker_cpus(spec) > 0 else spec.search.max_concurrent
    return max(1, min(spec.search.max_concurrent, fits))


def trial_demand(spec: Spec) -> dict[str, float]:
    """What one running trial holds: its workers' CPUs and GPUs, plus a CPU for its Tune
    function when that function starts a Ray Train run."""
    resources = spec.resources
    demand = {"CPU": extra_function_cpus(spec) + worker_cpus(spec)}
    if resources.gpus_per_worker > 0:
        demand["GPU"] = resources.workers_per_trial * resources.gpus_per_worker
    return demand


def cluster_concurrency(spec: Spec, cluster: ClusterInfo) -> int:
    """Trials to run at once on a cluster joined through RAY_ADDRESS.

    With an autoscaler, `max_concurrent` as given: the cluster is smallest when the
    search starts, and pending trials are the demand that makes the autoscaler add
    nodes (up to the cluster config's max_workers; size max_concurrent to fit those).
    Without one, capped to the trials whose CPUs and GPUs fit in the cluster's totals,
    so that waiting Tune functions cannot hold the CPUs their workers need.
    """
    if cluster.autoscaling:
        return spec.search.max_concurrent
    demand = trial_demand(spec)
    fits = min(int(cluster.resources.get(name, 0) // amount) for name, amount in demand.items())
    if fits < 1:
        have = ", ".join(f"{cluster.resources.get(name, 0):g} {name}" for name in demand)
        need = ", ".join(f"{amount:g} {name}" for name, amount in demand.items())
        raise ClusterSetupError(
            f"resources: a trial needs {need} ({'' if spec.resources.inline else '1 CPU for its Tune function + '}"
            f"workers_per_trial x cpus_per_worker/gpus_per_worker); this cluster has {have} on {cluster.nodes} node(s) and no "
            "autoscaler to add nodes. Lower resources.* or add nodes."
        )
    return min(spec.search.max_concurrent, fits)


class _TokenAuthNotice(logging.Filter):
    """Drops Ray's warning that a new local Ray enabled token authentication: raysearch
    chooses that mode on purpose (README, "Security defaults")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def local_authentication() -> str:
    """The token authentication a local Ray starts with: Ray's own default for a new local
    cluster (token; Ray's notice of it is not printed), unless RAY_AUTH_MODE says otherwise.
    Where no token is given (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH) and none is at Ray's default
    path (~/.ray/auth_token), one is written there readable by its owner only (Ray's own
    follows the umask). Ray reads the mode when it is imported and sets it itself for a new
    local cluster, so the environment is left as it is. Returns the mode."""
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if mode == "token" and not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        path = Path.home() / ".ray" / "auth_token"
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another search wrote it just now
                return mode
            with os.fdopen(descriptor, "w") as token:
                token.write(secrets.token_hex(32))
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenAuthNotice) for f in notices.filters):
        notices.addFilter(_TokenAuthNotice())
    return mode


def init_ray(spec: Spec) -> int:
    """Start (or join, with RAY_ADDRESS) Ray; returns the trial concurrency to use. A local
    Ray uses token authentication (`local_authentication`); a cluster is joined in the mode
    RAY_AUTH_MODE names (Ray never turns it on by itself for an explicit address).

    On a cluster that has, or may grow, more than one node, refuses (ClusterSetupError,
    Ray shut down again, nothing written) storage or MLflow that only one node can see.
    """
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            check_address(address)
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            cpus = os.cpu_count() or 1
            concurrency = effective_concurrency(spec, cpus)
            local_authentication()
            ray.init(
                # "local": never join a cluster that `ray start` recorded in /tmp/ray.
                address="local",
                num_cpus=cpus + concurrency * extra_function_cpus(spec),
                # Ray Train's placement-group cleaner needs the state API, which the
                # dashboard serves; bound to loopback so nothing listens beyond it.
                # Searches whose trials all train inline never start Ray Train.
                include_dashboard=not spec.resources.inline,
                dashboard_host="127.0.0.1",
                log_to_driver=False,
                logging_level=logging.WARNING,  # Ray's and Tune's INFO lines (search.quiet_libraries)
            )
            return concurrency
    try:
        cluster = describe_cluster()
        if cluster.multi_node:
            problems = storage.multi_node_problems(spec.storage or DEFAULT_STORAGE, spec.tracking.mlflow_uri)
            if problems:
                size = f"{cluster.nodes} node{'s' if cluster.nodes != 1 else ''}"
                raise ClusterSetupError(
                    f"this Ray cluster has {size}{' and an autoscaler that adds more' if cluster.autoscaling else ''}"
                    ", so results and tracking must be reachable beyond this node:\n  - " + "\n  - ".join(problems)
                )
        return cluster_concurrency(spec, cluster)
    except ClusterSetupError:
        ray.shutdown()
        raise
