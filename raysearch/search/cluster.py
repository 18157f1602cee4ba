"""Clusters: the cluster.yaml check, `raysearch launch`, and what the driver learns on joining one.

`raysearch launch` runs three `ray` commands from the project folder (the working dir):

1. `ray up -y --no-restart cluster.yaml`: creates the head, or updates it (file mounts,
   setup commands: raysearch is reinstalled at the version being launched) without
   restarting Ray, so a search already running on the cluster is not interrupted;
2. `ray dashboard --port P cluster.yaml`, in the background: an SSH tunnel from
   127.0.0.1:P here to the head's dashboard, which listens on the head's loopback only;
3. `ray job submit --address http://127.0.0.1:P --working-dir . -- python -m raysearch.cli run ...`:
   the project folder (minus what .gitignore lists) is uploaded as the job's working dir,
   so the driver on the head and every trial worker import the code being launched;
   `ray job submit` streams the job's logs until it ends.

Inside the job, Ray sets RAY_ADDRESS, and `raysearch run` joins the cluster (`resources.init_ray`).
"""
from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

DEFAULT_DASHBOARD_PORT = 8265
# Characters that `ray job submit` would hand to the head's shell unquoted
# (it joins the entrypoint with Windows-style quoting).
_UNSAFE_FOR_JOB_SHELL = set('$`"\\')


class ClusterSetupError(Exception):
    """The cluster, or the way the search would use it, cannot work; nothing was started or written."""


# --------------------------------------------------------------------------- cluster.yaml


def validate_cluster_config(path: Path) -> dict[str, Any]:
    """Check a cluster launcher YAML offline with Ray's own rules; raises ClusterSetupError.

    The same two steps as Ray's test of its example configs (test_autoscaler_yaml.py):
    `prepare_config` merges the provider's defaults, `validate_config` checks the JSON
    schema (unknown keys are errors) and the node types (`head_node_type` must be one of
    `available_node_types`, min_workers within max_workers). Nothing contacts the cloud.
    """
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ClusterSetupError(f"{path}: cannot read the cluster config: {error}") from None
    if not isinstance(config, dict):
        raise ClusterSetupError(f"{path}: the top level must be a mapping (cluster_name:, provider:, ...)")
    try:
        validate_config(prepare_config(config))
    except jsonschema.ValidationError as error:
        where = ".".join(str(part) for part in error.absolute_path) or "<top level>"
        raise ClusterSetupError(f"{path}: {where}: {error.message}") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ClusterSetupError(f"{path}: {error}") from None
    return config


# --------------------------------------------------------------------------- raysearch launch


@dataclass
class LaunchPlan:
    """The `ray` commands of one launch, all run from `working_dir`."""

    working_dir: Path
    up: list[str]
    tunnel: list[str]
    submit: list[str]
    dashboard: str
    entrypoint: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The commands as a user would type them (what `--dry-run` prints)."""
        return [
            f"cd {shlex.quote(str(self.working_dir))}",
            shlex.join(self.up),
            shlex.join(self.tunnel) + " &",
            shlex.join(self.submit),
        ]


def ray_cli() -> str:
    """The `ray` next to this Python (the local Ray must match the cluster's version)."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else "ray"


def launch_plan(
    cluster_yaml: Path,
    space: Path,
    run_args: Sequence[str],
    working_dir: Path,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
) -> LaunchPlan:
    """Build the commands; raises ClusterSetupError when the job could not see the experiment file."""
    working_dir = working_dir.resolve()
    try:
        relative_space = space.resolve().relative_to(working_dir)
    except ValueError:
        raise ClusterSetupError(
            f"--space {space} is outside the working dir {working_dir}; the job only sees the uploaded "
            "working dir. Move the file into the project, or pass --working-dir."
        ) from None
    for arg in run_args:
        if _UNSAFE_FOR_JOB_SHELL & set(arg):
            raise ClusterSetupError(
                f"{arg!r} holds one of $ ` \" \\, which `ray job submit` would pass unquoted to the head's "
                "shell; put that value in the experiment file instead."
            )
    ray = ray_cli()
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    entrypoint = ["python", "-m", "raysearch.cli", "run", "--space", relative_space.as_posix(), *run_args]
    cluster = str(cluster_yaml.resolve())
    return LaunchPlan(
        working_dir=working_dir,
        up=[ray, "up", "-y", "--no-restart", cluster],
        tunnel=[ray, "dashboard", "--port", str(dashboard_port), cluster],
        submit=[ray, "job", "submit", "--address", dashboard, "--working-dir", ".", "--", *entrypoint],
        dashboard=dashboard,
        entrypoint=entrypoint,
    )


def wait_for_dashboard(url: str, tunnel: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Wait until the tunnelled dashboard answers; raises ClusterSetupError if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if tunnel.poll() is not None:
            raise ClusterSetupError(f"the dashboard tunnel (`ray dashboard`) exited with code {tunnel.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5) as reply:
                json.load(reply)
                return
        except (OSError, ValueError):
            time.sleep(2)
    raise ClusterSetupError(f"the cluster's dashboard did not answer at {url} within {timeout_s:.0f} s")


def local_port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def execute(plan: LaunchPlan, echo: Callable[[str], None], popen: Callable[..., Any] = subprocess.Popen) -> int:
    """Run the plan: cluster up, tunnel, submit and stream; returns the job's exit code."""
    port = int(plan.dashboard.rsplit(":", 1)[1])
    if not local_port_free(port):
        # ssh would warn and carry on without the tunnel, and the job would go to whatever
        # listens there, e.g. a local Ray's dashboard.
        raise ClusterSetupError(f"port {port} is in use on this machine (a local Ray dashboard?); "
                                "pass --dashboard-port with a free port.")
    echo(f"$ {shlex.join(plan.up)}")
    code = popen(plan.up, cwd=plan.working_dir).wait()
    if code != 0:
        return code
    echo(f"$ {shlex.join(plan.tunnel)} &")
    tunnel = popen(plan.tunnel, cwd=plan.working_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_dashboard(plan.dashboard, tunnel)
        echo(f"$ {shlex.join(plan.submit)}")
        return popen(plan.submit, cwd=plan.working_dir).wait()
    finally:
        tunnel.terminate()
        try:
            tunnel.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tunnel.kill()


# --------------------------------------------------------------------------- joining a cluster


@dataclass
class ClusterInfo:
    """What the driver sees after `ray.init(address=...)`."""

    nodes: int
    resources: dict[str, float]
    autoscaling: bool

    @property
    def multi_node(self) -> bool:
        """More than one node now, or an autoscaler that may add some."""
        return self.nodes > 1 or self.autoscaling


def check_address(address: str) -> None:
    """Refuse RAY_ADDRESS values `raysearch run` cannot drive a search through."""
    if address.startswith(("http://", "https://")):
        raise ClusterSetupError(
            f"RAY_ADDRESS={address} is a dashboard (Jobs API) address. `raysearch run` needs the cluster's "
            "GCS address (HOST:6379, or `auto` on the head node); to start a search from this machine use "
            "`raysearch launch` or `ray job submit`."
        )
    if address.startswith("ray://"):
        raise ClusterSetupError(
            f"RAY_ADDRESS={address} is a Ray Client address; raysearch does not run its driver through Ray "
            "Client (the driver writes MLflow and the Optuna journal). Use `raysearch launch` or "
            "`ray job submit ... -- raysearch run ...` so the driver runs on the head node."
        )


def autoscaling_from_status(status: bytes | str | None, autoscaler_v2: bool) -> bool:
    """Whether an autoscaler with node types to launch runs on this cluster.

    Autoscaler v2 (default for `ray up` since Ray 2.50, and KubeRay's) only runs with a
    cluster config. Autoscaler v1 always runs, in read-only mode on a hand-made cluster,
    where every node type is named `node_<id>`; its status JSON is what `ray status` reads.
    """
    if autoscaler_v2:
        return True
    if not status:
        return False
    try:
        report = json.loads(status).get("autoscaler_report") or {}
    except (TypeError, ValueError):
        return False
    node_types = set((report.get("node_type_mapping") or {}).values())
    return any(not name.startswith("node_") for name in node_types) or bool(report.get("pending_launches"))


def describe_cluster() -> ClusterInfo:
    """Nodes, resources and autoscaling of the cluster this driver is connected to."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return ClusterInfo(nodes=len(nodes), resources=dict(ray.cluster_resources()), autoscaling=_has_autoscaler())


def _has_autoscaler() -> bool:
    # Ray has no public API for "can this cluster grow"; `ray status` reads the same sources.
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2
        from ray.experimental.internal_kv import _internal_kv_get

        return autoscaling_from_status(_internal_kv_get("__autoscaling_status"), is_autoscaler_v2(fetch_from_server=True))
    except Exception:  # noqa: BLE001 - unknown: judge by the nodes there are
        return False
