"""GPU check: every adapter variant's bf16 step time and peak CUDA memory on SmolLM2-135M-Instruct
and on its pruned version, and two LoRA trials sharing one GPU.

Not yet run on a GPU: no GPU was lent when it was written, so no GPU number exists. Its --quick
mode (CPU, tiny models) is what the test suite runs; those numbers mean nothing.

Part 1, per model (the full `builtin:smollm2`, resolved through `trainables.models.resolve_model_path`,
and its pruned version: benchmarks/pruned_smollm2.py's RECIPE, built through
`trainables.pruning.pruning_recipe` + `ensure_pruned` and cached as a trial builds it) and per
registered variant (`trainables.adapters.ADAPTERS`), one variant at a time in this process:
adapter_step_cost.py's `Runner` sets the variant up as the loop does (construct, prepare, attach,
AdamW on `param_groups`), in the loop's precision: `make_task` picks it (`precision: auto`: bf16
weights on a GPU that supports bf16, else fp32), trainable parameters upcast to fp32
(`upcast_trainable`), the forward under autocast. A step is what the loop's step is: forward,
extra_loss, backward, clip, optimizer.step, after_step, zero_grad, with `torch.cuda.synchronize()`
before and after; reported: the median over the timed steps (after warm-up), and the peak CUDA
memory of those steps (`torch.cuda.reset_peak_memory_stats` after warm-up, then
`max_memory_allocated`: the model, the adapter, AdamW state and the step's activations), each also
as a ratio to LoRA on the same model (the JSON also has every step's time and their mean, which
counts the steps a schedule makes long: ALoRA's rounds, AdaLoRA's allocation). Data: random token
ids, batch 8 x 160 tokens (the SmolLM2 searches' batch_size and max_length), every token a label
(the loop computes logits on the response positions only, so its LM head costs it less). Rank 8,
alpha 16, no dropout, attention targets (adapter_step_cost's `adapter_config`); the variants'
schedules span the warm-up and timed steps.

Part 2: two trials sharing one GPU. The script starts itself twice in worker mode (--worker), each
process training LoRA on the full model as in part 1. Both warm up; then each times its steps
alone in turn (the other holding its memory, idle), then both time them at once. Reported: each
one's median step time together over alone (the slowdown), whether both fit (neither ran out of
memory), each one's peak memory (allocated and reserved), the GPU's total, and how much their
timed phases overlapped. This process keeps its CUDA context (a few hundred MB) meanwhile; its
cached blocks are freed first.

Where the RECIPE's calibration file (../shared/data/commonsense/ARC-Easy.train.json) is missing,
the pruned model is ranked by magnitude instead of Taylor importance: the same counts are removed,
so the shapes, all that step time and memory depend on, are the same (the JSON says which).

--quick runs the same code on the CPU, in fp32, on a tiny GQA LLaMA (hidden 48, 6 query heads on
3 KV heads, MLP 40, 2 layers, random) saved to a temporary folder and its pruned version (RECIPE's
ratios, Taylor on 12 records written for it, in a temporary cache), batch 2 x 16, 1 warm-up and 2
timed steps, memory not measured (n/m), the sharing part with two 1-thread worker processes.

    python benchmarks/gpu_check.py --json benchmarks/results/gpu_check.json   # on a GPU machine
    python benchmarks/gpu_check.py --quick   # CPU check: 36-46 s on 2 cores that another run kept busy

Time budget of the GPU run: 8 minutes (`--budget-s 480`, counted from the start, SmolLM2's
conversion included), expected well under it on one H100 (not measured). Part 1 starts no new
variant after 70% of the budget and part 2 is skipped past 85% of it: what was not measured says
so in the table and the JSON, and the exit code is 1.
The JSON is rewritten after every row, so a run cut short keeps what it measured. The first run
on a machine also converts SmolLM2 (about 20 s) and builds the pruned model (seconds on a GPU).

Exit codes: 0: everything measured, or skipped because there is no CUDA GPU (without --quick;
a skip, not a failure); 1: something was not measured (a variant or the sharing part failed,
or the budget ran out; the table and JSON say what) or the script crashed; 2: bad arguments.
Two trials that do not fit together is a finding, not a failure (exit 0, `both_fit: false`).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_key, "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import adapter_step_cost as step_cost  # noqa: E402  (the Runner, Case and batches this script reuses)
from pruned_smollm2 import RECIPE  # noqa: E402

import torch  # noqa: E402

from trainables.adapters import ADAPTERS  # noqa: E402
from trainables.models import load_causal_lm, resolve_model_path, upcast_trainable  # noqa: E402
from trainables.tasks import make_task  # noqa: E402

NO_GPU = ("no CUDA GPU here: this script measures bf16 step time and CUDA memory; run it on a GPU machine, "
          "or --quick for the CPU plumbing check")
MB = 2**20


@dataclass
class Settings:
    device: str
    precision: str
    batch: int
    seq: int
    rank: int
    warmup: int
    steps: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":  # on the CPU nothing is measured that this would change (and it costs 0.3 s)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def on_device(stream: Iterator[dict[str, torch.Tensor]], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    for batch in stream:
        yield {k: v.to(device) for k, v in batch.items()}


class DeviceRunner(step_cost.Runner):
    """adapter_step_cost's Runner (the loop's setup) on the task's device and in its precision: the
    case builds the model in `task.dtype` on the device, `prepare` gets CPU batches as there (GoRA
    and ALoRA move what they read to the model's device), the trainable parameters are upcast to
    fp32 after `attach` as the loop does (the same Parameter objects: AdamW, built before, holds them)."""

    def __init__(self, case: step_cost.Case, variant: str, settings: Settings, task: Any) -> None:
        self.task, self.device = task, task.device
        super().__init__(case, variant, settings.rank, total_steps=settings.warmup + settings.steps)
        upcast_trainable(self.model)
        self.stream = on_device(self.stream, self.device)

    def step(self, saved: dict[int, int] | None = None) -> float:
        """One training step as the loop takes it (forward under the task's autocast, the loss in
        fp32; extra_loss, backward, clip, optimizer.step, after_step, zero_grad outside it), in
        seconds, the device synchronized before and after. `saved` is not supported here."""
        self.step_index += 1
        batch = next(self.stream)
        synchronize(self.device)
        started = time.perf_counter()
        with self.task.autocast():
            loss = self.model(**batch).loss.float()
        extra = self.adapter.extra_loss(self.model, self.step_index)
        (loss if extra is None else loss + extra).backward()
        torch.nn.utils.clip_grad_norm_(self.clipped, 1.0)
        self.optimizer.step()
        self.adapter.after_step(self.model, self.step_index, batch)
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        return time.perf_counter() - started


def case_for(name: str, path: str, settings: Settings, task: Any) -> step_cost.Case:
    """The model loaded once by the loop's loader, in the loop's precision, on the CPU; each variant
    gets a fresh copy of it on the device."""
    loaded, _ = load_causal_lm(path, dtype=task.dtype)

    def build() -> torch.nn.Module:
        return copy.deepcopy(loaded).to(task.device)

    return step_cost.Case(name, build, "causal_lm", loaded.config.vocab_size, settings.batch, settings.seq)


def make_settings_task(settings: Settings) -> Any:
    """The loop's task object for a causal LM on the device: its `dtype` and `autocast()`."""
    return make_task({"type": "causal_lm", "precision": settings.precision}, torch.device(settings.device), seed=0)


def describe(error: BaseException) -> str:
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first[:300]}"


def measure_variant(case: step_cost.Case, variant: str, settings: Settings, task: Any) -> dict[str, Any]:
    """One variant on one model, alone in this process: setup, warm-up, timed steps, peak memory."""
    device = task.device
    cuda = device.type == "cuda"
    row: dict[str, Any] = {"model": case.name, "variant": variant, "rank": settings.rank}
    free_memory(device)
    runner = None
    try:
        started = time.perf_counter()
        runner = DeviceRunner(case, variant, settings, task)
        synchronize(device)
        row["setup_s"] = time.perf_counter() - started
        row["setup_peak_mb"] = torch.cuda.max_memory_allocated(device) / MB if cuda else None
        row["trainable_params"] = sum(p.numel() for p in runner.model.parameters() if p.requires_grad)
        row["adapter_params"] = runner.adapter.adapter_params(runner.model)
        for _ in range(settings.warmup):
            runner.step()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            row["resident_mb"] = torch.cuda.memory_allocated(device) / MB
        seconds = [runner.step() for _ in range(settings.steps)]
        row["steps_ms"] = [1000 * s for s in seconds]
        row["step_ms"] = 1000 * statistics.median(seconds)
        row["mean_ms"] = 1000 * statistics.mean(seconds)  # with the steps a schedule makes long (ALoRA's rounds)
        row["peak_mb"] = torch.cuda.max_memory_allocated(device) / MB if cuda else None
        row["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / MB if cuda else None
    except Exception as error:  # noqa: BLE001 -- a variant that fails is a finding: recorded, the others go on
        if not isinstance(error, torch.OutOfMemoryError):
            traceback.print_exc()
        row["error"] = describe(error)
    finally:
        del runner
        free_memory(device)
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's step time and peak memory over LoRA's on the same model (None where either is missing)."""
    for row in rows:
        lora = next((r for r in rows if r["model"] == row["model"] and r["variant"] == "lora"), {})
        for key, ratio in (("step_ms", "vs_lora"), ("peak_mb", "peak_vs_lora")):
            mine, theirs = row.get(key), lora.get(key)
            row[ratio] = mine / theirs if mine is not None and theirs else None


# --- the models ------------------------------------------------------------------------------


def save_tiny_gqa_llama(path: Path) -> Path:
    """--quick's "full" model: a tiny LLaMA with GQA (hidden 48, 6 query heads on 3 KV heads, MLP 40,
    2 layers, random, seed 0) on builtin:tiny-llama's tokenizer, saved as a folder that can be pruned
    (the model tests/unit/test_pruning.py prunes)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from trainables.models import tiny_llama_tokenizer

    tokenizer = tiny_llama_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=3, head_dim=8, max_position_embeddings=128,
                         tie_word_embeddings=True, initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_records(path: Path, n: int = 12) -> Path:
    records = [{"instruction": f"is {i} an even number?", "input": "", "output": f"the answer is {i % 2 == 0}"}
               for i in range(n)]
    path.write_text(json.dumps(records))
    return path


def prepare_models(quick: bool, workdir: Path) -> dict[str, dict[str, Any]]:
    """{"full": ..., "pruned": ...}: each model's folder and what it is. The pruned one is built
    (or read from the cache) through trainables/pruning.py, with RECIPE's ratios."""
    from trainables.pruning import RECIPE_FILE, ensure_pruned, pruning_recipe

    note = None
    if quick:
        model = str(save_tiny_gqa_llama(workdir / "tiny-gqa-llama"))
        calibration = {**RECIPE["calibration"], "data": str(write_records(workdir / "records.json")),
                       "examples": 8, "max_tokens": 32}
        section = {**RECIPE, "calibration": calibration}
    else:
        model, section = "builtin:smollm2", dict(RECIPE)
        if not Path(RECIPE["calibration"]["data"]).is_file():
            section = {k: v for k, v in RECIPE.items() if k != "calibration"} | {"importance": "magnitude"}
            note = (f"RECIPE's calibration file {RECIPE['calibration']['data']} is not on this machine: ranked by "
                    "magnitude instead of Taylor; the same counts are removed, so the shapes are the same")
    full_path = resolve_model_path(model)
    recipe = pruning_recipe({"model": model, "task": {}, "pruning": section})
    started = time.time()
    folder = ensure_pruned(recipe)
    record = json.loads((folder / RECIPE_FILE).read_text())
    return {
        "full": {"name": model, "path": full_path, "parameters": record["parameters"]["before"],
                 "shape": record["shape_before"]},
        "pruned": {"name": f"{model}, pruned", "path": str(folder), "parameters": record["parameters"]["after"],
                   "shape": record["shape_after"], "importance": recipe["importance"],
                   "attention_ratio": recipe["attention_ratio"], "mlp_ratio": recipe["mlp_ratio"],
                   "hash": record["hash"], "ready_s": round(time.time() - started, 1), "note": note},
    }


# --- part 2: two trials on one GPU ----------------------------------------------------------------


def wait_for(path: Path, timeout_s: float = 600.0) -> None:
    """Until `path` exists; a worker whose parent is gone (killed) gives up rather than wait on."""
    deadline, parent = time.time() + timeout_s, os.getppid()
    while not path.exists():
        if time.time() > deadline or os.getppid() != parent:
            raise TimeoutError(f"{path} never appeared" + ("" if os.getppid() == parent else ": the parent is gone"))
        time.sleep(0.01)


def timed_steps(runner: DeviceRunner, steps: int) -> dict[str, Any]:
    began = time.time()
    seconds = [runner.step() for _ in range(steps)]
    return {"step_ms": 1000 * statistics.median(seconds), "steps_ms": [1000 * s for s in seconds],
            "started": began, "ended": time.time()}


def worker(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """--worker: LoRA on `--model`, set up and stepped as part 1 does. After warm-up it says so
    (`ready-<index>` in --signals), times its steps alone when told (`alone-<index>`; the other
    worker waits meanwhile), says so (`alone-done-<index>`), then times them again once told that
    both run (`go`). Prints one JSON line, the last of its output; out of memory is a result."""
    signals, index = Path(args.signals), args.index
    result: dict[str, Any] = {"index": index}
    wait_for(signals / "start", timeout_s=3600.0)  # imported; nothing loaded, the device untouched
    task = make_settings_task(settings)
    device = task.device
    cuda = device.type == "cuda"
    try:
        runner = DeviceRunner(case_for("full", args.model, settings, task), "lora", settings, task)
        for _ in range(settings.warmup):
            runner.step()
        (signals / f"ready-{index}").touch()
        wait_for(signals / f"alone-{index}")
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        result["alone"] = timed_steps(runner, settings.steps)
        (signals / f"alone-done-{index}").touch()
        wait_for(signals / "go")
        result["together"] = timed_steps(runner, settings.steps)
        result["fits"] = True
    except torch.OutOfMemoryError as error:
        result |= {"fits": False, "error": describe(error)}
    if cuda:
        result |= {"peak_mb": torch.cuda.max_memory_allocated(device) / MB,
                   "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / MB}
    print(json.dumps(result))
    return result


class Pair:
    """Two worker processes of this script. Started early, they import while part 1 runs and wait
    for `start` before they load anything (on a GPU: before they touch it); `run()` then has both
    warm up, each time its steps alone in turn (the other holding its memory, idle), then both at once."""

    def __init__(self, args: argparse.Namespace, settings: Settings, model_path: str, workdir: Path) -> None:
        self.timeout_s = args.worker_timeout_s
        self.signals = workdir / f"signals-{time.time_ns()}"
        self.signals.mkdir()
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model_path,
                   "--device", settings.device, "--precision", settings.precision, "--batch", str(settings.batch),
                   "--seq", str(settings.seq), "--rank", str(settings.rank), "--warmup", str(settings.warmup),
                   "--steps", str(settings.steps), "--threads", str(args.worker_threads),
                   "--signals", str(self.signals)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        self.processes: list[subprocess.Popen] = []
        self.logs = []
        for i in range(2):
            out, err = self.signals / f"worker-{i}.out", self.signals / f"worker-{i}.err"
            self.logs.append((out, err))
            with open(out, "w") as stdout, open(err, "w") as stderr:
                self.processes.append(subprocess.Popen(command + ["--index", str(i)], env=env, cwd=ROOT,
                                                       stdout=stdout, stderr=stderr))

    def reached(self, deadline: float, *names: str) -> bool:
        """Whether every worker got there; False at once when a worker has exited or time is up."""
        while not all((self.signals / n).exists() for n in names):
            if any(p.poll() is not None for p in self.processes) or time.time() > deadline:
                return False
            time.sleep(0.01)
        return True

    def run(self) -> list[dict[str, Any]]:
        deadline = time.time() + self.timeout_s
        (self.signals / "start").touch()
        if self.reached(deadline, "ready-0", "ready-1"):
            (self.signals / "alone-0").touch()
            if self.reached(deadline, "alone-done-0"):
                (self.signals / "alone-1").touch()
                self.reached(deadline, "alone-done-1")
        for name in ("alone-0", "alone-1", "go"):  # whatever happened, no worker waits for ever
            (self.signals / name).touch()
        results = []
        for i, (process, (out, err)) in enumerate(zip(self.processes, self.logs)):
            try:
                process.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            lines = out.read_text().strip().splitlines()
            if process.returncode == 0 and lines:
                results.append(json.loads(lines[-1]))
            else:
                tail = err.read_text()[-2000:]
                results.append({"index": i, "fits": False, "crashed": True,
                                "error": f"worker exited with {process.returncode}: {tail}"})
        return results

    def close(self) -> None:
        """End the workers that are still running (not run, or stuck), these two processes only."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def sharing(pair: Pair, settings: Settings) -> dict[str, Any]:
    """Two LoRA trials on the same device: each one's step time alone, then both at once."""
    workers = pair.run()
    result: dict[str, Any] = {"model": "full", "variant": "lora", "workers": workers,
                              "both_fit": all(w["fits"] for w in workers)}
    crashed = [w["error"] for w in workers if w.get("crashed")]
    if crashed:
        result["error"] = crashed[0]
    result["slowdown"] = [w["together"]["step_ms"] / w["alone"]["step_ms"] if w["fits"] else None for w in workers]
    if result["both_fit"]:
        phases = [w["together"] for w in workers]
        first, last = max(p["started"] for p in phases), min(p["ended"] for p in phases)
        longest = max(p["ended"] - p["started"] for p in phases)
        result["overlap"] = max(0.0, last - first) / longest if longest > 0 else 0.0
    if settings.device == "cuda":
        result["device_total_mb"] = torch.cuda.get_device_properties(0).total_memory / MB
    return result


# --- the report ---------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str, width: int, missing: str = "-") -> str:
    return f"{missing:>{width}}" if value is None else f"{value:>{width}{spec}}"


def print_rows(rows: list[dict[str, Any]], cuda: bool) -> None:
    na = "-" if cuda else "n/m"
    print(f"{'model':<7} {'variant':<12} {'rank':>4} {'step ms':>9} {'x LoRA':>7} {'peak MB':>9} {'x LoRA':>7} "
          f"{'resident MB':>11} {'setup s':>8} {'trainable':>10}")
    for r in rows:
        if r.get("error"):
            print(f"{r['model']:<7} {r['variant']:<12} {r['rank']:>4}  NOT MEASURED: {r['error']}")
            continue
        print(f"{r['model']:<7} {r['variant']:<12} {r['rank']:>4} {r['step_ms']:>9.1f} {fmt(r['vs_lora'], '.2f', 7)} "
              f"{fmt(r['peak_mb'], '.0f', 9, na)} {fmt(r['peak_vs_lora'], '.2f', 7, na)} "
              f"{fmt(r.get('resident_mb'), '.0f', 11, na)} {r['setup_s']:>8.1f} {r['trainable_params']:>10,}")


def print_sharing(share: dict[str, Any]) -> None:
    print("\ntwo LoRA trials on one device (full model), two processes: each timed alone (the other idle), "
          "then both at once")
    for w, slow in zip(share.get("workers", []), share.get("slowdown", [])):
        alone, together = w.get("alone", {}).get("step_ms"), w.get("together", {}).get("step_ms")
        line = (f"  trial {w['index'] + 1}: alone {fmt(alone, '.1f', 7)} ms/step, together {fmt(together, '.1f', 7)} "
                f"ms/step: x{fmt(slow, '.2f', 4)}")
        if "peak_mb" in w:
            line += f"; peak {w['peak_mb']:.0f} MB (reserved {w['peak_reserved_mb']:.0f})"
        print(line + (f"  [{w['error'][:300]}]" if w.get("error") else ""))
    total = f" (of {share['device_total_mb']:.0f} MB)" if "device_total_mb" in share else ""
    overlap = f"; their timed phases overlapped {100 * share['overlap']:.0f}%" if "overlap" in share else ""
    print(f"  both fit{total}: {'yes' if share['both_fit'] else 'NO'}{overlap}"
          + (f"\n  NOT MEASURED: {share['error'][:300]}" if share.get("error") else ""))


def save(result: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1))


def exit_code(result: dict[str, Any]) -> int:
    """0: all measured, or skipped for want of a GPU; 1: something was not measured."""
    if result.get("skipped"):
        return 0
    failed = any(r.get("error") for r in result.get("rows", []))
    return 1 if failed or (result.get("sharing") or {}).get("error") else 0


@contextlib.contextmanager
def cache_in(folder: Path | None) -> Iterator[None]:
    """RAYSEARCH_CACHE set to `folder` meanwhile (--quick: its tiny pruned models stay out of the real cache)."""
    if folder is None:
        yield
        return
    old = os.environ.get("RAYSEARCH_CACHE")
    os.environ["RAYSEARCH_CACHE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAYSEARCH_CACHE", None)
        else:
            os.environ["RAYSEARCH_CACHE"] = old


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU, tiny models, 3 steps, fp32: the plumbing check")
    parser.add_argument("--json", default=None, help="write the results here (rewritten after every row)")
    parser.add_argument("--variants", nargs="*", default=None, help="default: every registered variant")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 8; --quick 2)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 160; --quick 16)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 20; --quick 2)")
    parser.add_argument("--share-steps", type=int, default=None, help="timed steps of each sharing worker "
                        "(default 30; --quick 2)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="as task.precision: auto = bf16 on a GPU that supports it, else fp32")
    parser.add_argument("--budget-s", type=float, default=480.0, help="the run's time budget (default 480)")
    parser.add_argument("--skip-sharing", action="store_true", help="part 1 only")
    # worker mode (part 2 starts the script itself with these)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--signals", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-timeout-s", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.variants or []) - set(ADAPTERS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; registered: {sorted(ADAPTERS)}")
    quick = args.quick
    for name, full, small in (("batch", 8, 2), ("seq", 160, 16), ("warmup", 3, 1), ("steps", 20, 2),
                              ("share_steps", 30, 2)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.worker_threads = args.worker_threads or (1 if quick else max(1, (os.cpu_count() or 2) // 2))
    args.worker_timeout_s = args.worker_timeout_s or (120.0 if quick else 300.0)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        settings = Settings(args.device, args.precision, args.batch, args.seq, args.rank, args.warmup, args.steps)
        return worker(args, settings)
    started = time.time()
    if not args.quick and not torch.cuda.is_available():
        print(NO_GPU)
        result = {"skipped": NO_GPU}
        save(result, args.json)
        return result
    if args.quick:
        torch.set_num_threads(1)  # a plumbing check: keep off the other cores
    device = "cpu" if args.quick else "cuda"
    settings = Settings(device, "fp32" if args.quick and args.precision == "auto" else args.precision,
                        args.batch, args.seq, args.rank, args.warmup, args.steps)
    task = make_settings_task(settings)
    cuda = device == "cuda"
    variants = ["lora"] + [v for v in (args.variants or sorted(ADAPTERS)) if v != "lora"]
    name = torch.cuda.get_device_name(0) if cuda else "cpu (--quick: tiny models, numbers mean nothing)"
    result: dict[str, Any] = {
        "device": name, "quick": args.quick, "dtype": str(task.dtype).removeprefix("torch."),
        "torch": torch.__version__, "settings": asdict(settings) | {"share_steps": args.share_steps},
        "measured_on_gpu": cuda, "rows": [],
    }
    print(f"device: {name}; weights {result['dtype']}{' + autocast' if task.dtype != torch.float32 else ''}; "
          f"batch {settings.batch} x {settings.seq} tokens; rank {settings.rank}; "
          f"{settings.warmup} warm-up + {settings.steps} timed steps per variant (median); torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, \
            cache_in(Path(tmp) / "cache" if args.quick else None):
        workdir = Path(tmp)
        models = prepare_models(args.quick, workdir)
        result["models"] = models
        result["timing_s"] = {"models": round(time.time() - started, 1)}
        for key, model in models.items():
            print(f"{key}: {model['name']}, {model['parameters']:,} parameters, {model['shape']}"
                  + (f" ({model['note']})" if model.get("note") else ""))
        share_settings = Settings(**{**asdict(settings), "steps": args.share_steps})
        pair = None if args.skip_sharing else Pair(args, share_settings, models["full"]["path"], workdir)
        try:
            for key, model in models.items():
                case = case_for(key, model["path"], settings, task)
                for variant in variants:
                    if time.time() - started > 0.7 * args.budget_s:
                        row = {"model": key, "variant": variant, "rank": settings.rank,
                               "error": f"skipped: past 70% of --budget-s {args.budget_s:.0f}"}
                    else:
                        row = measure_variant(case, variant, settings, task)
                    result["rows"].append(row)
                    add_ratios(result["rows"])
                    save(result, args.json)
                del case
            result["timing_s"]["variants"] = round(time.time() - started - result["timing_s"]["models"], 1)
            print()
            print_rows(result["rows"], cuda)
            if pair is not None:
                if time.time() - started > 0.85 * args.budget_s:
                    result["sharing"] = {"error": f"skipped: past 85% of --budget-s {args.budget_s:.0f}",
                                         "workers": [], "slowdown": [], "both_fit": False}
                else:
                    free_memory(task.device)
                    began = time.time()
                    result["sharing"] = sharing(pair, share_settings)
                    result["timing_s"]["sharing"] = round(time.time() - began, 1)
                print_sharing(result["sharing"])
                save(result, args.json)
        finally:
            if pair is not None:
                pair.close()
    result["seconds"] = round(time.time() - started, 1)
    memory = "peak = torch.cuda.max_memory_allocated over the timed steps" if cuda else \
        "memory not measured on CPU (n/m)"
    print(f"\nx LoRA: over LoRA on the same model; {memory}; {result['seconds']} s in all")
    save(result, args.json)
    return result


if __name__ == "__main__":
    sys.exit(exit_code(main()))
