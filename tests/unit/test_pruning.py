"""`pruning:` (trainables/pruning.py): a structurally pruned base model, built once per recipe
and cached, trained on by trials, recorded in MLflow and named by `raysearch export`.

On a tiny LLaMA with GQA built from a config (hidden 48, 6 query heads sharing 3 KV heads,
head_dim 8, MLP 40, 2 layers, MiniLM's vocabulary): the pruned folder's config and shapes and a
plain `from_pretrained`; the surgery against the base with the removed rows zeroed (the same
function); the Taylor and magnitude rankings against an independent computation with plain torch
autograd; two processes building at once; bad recipes refused with exit code 2 before anything
is written; a trial on the pruned base; and the export reproduced in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
from typer.testing import CliRunner

from raysearch.cli import app
from raysearch.experiment.pruning import pruning_config
from raysearch.experiment.spec import load_spec, spec_from_dict
from trainables import pruning, pruning_importance as importance
from trainables.models import tiny_config, tiny_llama_tokenizer
from trainables.pretrained import COMPLETE_MARKER

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
HEADS, KV, HEAD_DIM, MLP = 6, 3, 8, 40


def save_gqa_llama(path: Path) -> Path:
    """The tiny GQA LLaMA (random, seed 0, init std 0.2 so the loss has gradients worth ranking)."""
    tokenizer = tiny_llama_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HEADS * HEAD_DIM, intermediate_size=MLP,
                         num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM,
                         max_position_embeddings=128, tie_word_embeddings=True, initializer_range=0.2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_records(path: Path, n: int = 24) -> Path:
    """Instruction records (true/false), and every fourth a plain `text` record."""
    records = []
    for i in range(n):
        if i % 4 == 3:
            records.append({"text": f"the {i} little boats sailed past the harbour wall before noon"})
        else:
            answer = "true" if i % 3 else "false"
            records.append({"instruction": f"is {i} an even number?\n\nAnswer format: true/false", "input": "",
                            "output": f"the correct answer is {answer}", "answer": answer})
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_gqa_llama(tmp_path_factory.mktemp("gqa-llama"))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_records(tmp_path_factory.mktemp("data") / "records.json")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the module (a recipe is built once, as on a machine)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSEARCH_CACHE", str(cache))


def config_of(base: Path, data: Path, **section: Any) -> dict[str, Any]:
    """What a trial's config holds for pruning (model, task, pruning), from a validated spec."""
    spec = spec_from_dict({
        "name": "pruned", "model": str(base),
        "task": {"type": "causal_lm", "dataset": str(data), "max_length": 48},
        "pruning": {"attention_ratio": 0.34, "mlp_ratio": 0.5,
                    "calibration": {"examples": 10, "max_tokens": 24, "seed": 1}, **section},
        "search": {"space": {"rank": {"choice": [4]}}, "objectives": {"val_answer_accuracy": "max"}},
    })
    return pruning_config(spec)


def built(config: dict[str, Any]) -> tuple[Path, dict[str, Any], list[dict[str, list[int]]]]:
    folder = Path(pruning.model_source(config))
    return (folder, json.loads((folder / pruning.RECIPE_FILE).read_text()),
            json.loads((folder / pruning.KEPT_FILE).read_text()))


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 6259, 2944, 102], [101, 7592, 2088, 999, 102, 0, 0, 0, 0, 0]])


# --- the recipe and its cache folder ------------------------------------------------------


def test_the_recipe_fills_its_defaults_and_its_hash_follows_what_the_weights_depend_on(base_dir, data_file, tmp_path):
    config = config_of(base_dir, data_file)
    recipe = pruning.pruning_recipe(config)
    assert recipe == {"model": str(base_dir), "importance": "taylor", "attention_ratio": 0.34, "mlp_ratio": 0.5,
                      "calibration": {"data": str(data_file), "examples": 10, "max_tokens": 24, "seed": 1,
                                      "test_fraction": 0.0, "test_seed": 0}}
    folder = pruning.pruned_folder(recipe)
    assert folder.parent == pruning.cache_dir() / "models" and folder.name.startswith("pruned-")
    assert pruning.pruned_folder(pruning.pruning_recipe(config_of(base_dir, data_file))) == folder  # stable
    # Each of these is a different pruned model: a different folder.
    others = [pruning.pruning_recipe(config_of(base_dir, data_file, mlp_ratio=0.25)),
              pruning.pruning_recipe(config_of(base_dir, data_file, calibration={"examples": 10, "seed": 2})),
              pruning.pruning_recipe(config_of(base_dir, data_file, importance="magnitude", calibration={}))]
    copy = write_records(tmp_path / "records.json")
    copy.write_text(copy.read_text().replace("harbour", "harbor"))  # the same file name, other content
    others.append({**recipe, "calibration": {**recipe["calibration"], "data": str(copy)}})
    assert len({pruning.pruned_folder(r) for r in [recipe, *others]}) == 5
    assert others[2]["calibration"] is None  # magnitude reads no data

    # Unset data: the experiment's own first source, its test split carried so it is left out.
    spec = spec_from_dict({"name": "own", "model": str(base_dir),
                           "task": {"type": "causal_lm", "dataset": [str(data_file)], "test_fraction": 0.25,
                                    "test_seed": 7},
                           "pruning": {"ratio": 0.3},
                           "search": {"space": {"rank": {"choice": [4]}}, "objectives": {"val_answer_accuracy": "max"}}})
    own = pruning.pruning_recipe(pruning_config(spec))["calibration"]
    assert own == {"data": str(data_file), "examples": 32, "max_tokens": 256, "seed": 0, "test_fraction": 0.25,
                   "test_seed": 7}


def test_removed_counts_round_half_up_per_layer():
    assert [pruning.removed_count(r, 3) for r in (0.1, 1 / 3, 0.34, 0.5, 0.66, 0.9)] == [0, 1, 1, 2, 2, 3]
    assert pruning.kept_counts({"num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536},
                               0.34, 0.5) == (2, 768)


def test_calibration_leaves_the_test_split_out_and_draws_with_its_seed(data_file):
    calibration = {"data": str(data_file), "examples": 17, "max_tokens": 24, "seed": 0, "test_fraction": 0.25,
                   "test_seed": 0}
    assert importance.calibration_problems(calibration) == []  # 24 records, 6 held out: 18
    texts = importance.calibration_texts(calibration)
    held_out = importance.held_out_indices(24, 0.25, 0)
    records = json.loads(data_file.read_text())
    assert len(held_out) == 6 and not {importance.calibration_text(records[i]) for i in held_out} & set(texts)
    assert texts == importance.calibration_texts(calibration)  # the same draw every time
    assert texts != importance.calibration_texts({**calibration, "seed": 1})
    assert any(t.startswith("Below is an instruction") and t.endswith("the correct answer is true") for t in texts)
    assert any(t.startswith("the ") and "boats" in t for t in texts)  # `text` records as they are
    (field, why), = importance.calibration_problems({**calibration, "examples": 19})
    assert field == "examples" and "18 readable record(s)" in why and "less the 6 of the test split" in why


# --- the pruned folder --------------------------------------------------------------------


def test_the_pruned_folder_is_a_plain_transformers_model_with_the_kept_counts(base_dir, data_file):
    folder, record, kept = built(config_of(base_dir, data_file))
    model = AutoModelForCausalLM.from_pretrained(folder)  # transformers alone
    config = model.config
    assert (config.num_key_value_heads, config.num_attention_heads, config.head_dim, config.intermediate_size) == \
        (2, 4, HEAD_DIM, 20)  # 1 of 3 KV groups (with its 2 query heads), half of 40 channels
    assert config.hidden_size == HEADS * HEAD_DIM and config.vocab_size == len(tiny_llama_tokenizer())
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        assert attention.q_proj.weight.shape == (4 * HEAD_DIM, 48) and attention.o_proj.weight.shape == (48, 4 * HEAD_DIM)
        assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (2 * HEAD_DIM, 48)
        assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (20, 48) and mlp.down_proj.weight.shape == (48, 20)
    assert model.model.embed_tokens.weight.shape == (len(tiny_llama_tokenizer()), 48)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert logits_of(model, IDS).shape == (2, 10, len(tiny_llama_tokenizer()))
    assert AutoTokenizer.from_pretrained(folder).eos_token == "[SEP]"
    assert (folder / COMPLETE_MARKER).is_file()
    assert [len(k["kv_groups"]) for k in kept] == [2, 2] and [len(k["mlp_channels"]) for k in kept] == [20, 20]
    assert record["recipe"] == pruning.pruning_recipe(config_of(base_dir, data_file))
    assert record["hash"] == pruning.recipe_hash(record["recipe"]) and record["hash"][:16] in folder.name
    before, after = record["parameters"]["before"], record["parameters"]["after"]
    assert after == sum(p.numel() for p in model.parameters()) and before - after == 2 * (
        2 * (2 * HEAD_DIM * 48) + 2 * (HEAD_DIM * 48) + 3 * (20 * 48))  # per layer: q+o of 2 heads, k+v of 1, 20 channels
    assert record["calibration_tokens"] > 10 and record["shape_after"]["kv_groups"] == 2


@pytest.mark.parametrize("kind", ["llama-taylor", "qwen2-magnitude"])
def test_the_pruned_model_computes_what_the_base_computes_with_the_removed_groups_zeroed(kind, base_dir, data_file,
                                                                                          tmp_path):
    """Zeroing o_proj's columns of a removed KV group's query heads and down_proj's columns of a
    removed channel silences exactly what the surgery removes: the logits must agree."""
    if kind == "llama-taylor":
        base, config = base_dir, config_of(base_dir, data_file)
    else:  # Qwen2 has q/k/v biases; no GQA here (2 heads, 2 KV heads)
        base = tmp_path / "qwen2"
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(tiny_config("qwen2")).save_pretrained(base)
        tiny_llama_tokenizer().save_pretrained(base)
        config = config_of(base, data_file, importance="magnitude", attention_ratio=0.5, mlp_ratio=0.25,
                           calibration={})
    folder, _, kept = built(config)
    reference = AutoModelForCausalLM.from_pretrained(base)
    heads, groups = reference.config.num_attention_heads, reference.config.num_key_value_heads
    d, n_rep = importance.head_dim_of(reference.config), heads // groups
    with torch.no_grad():
        for layer, keep in zip(reference.model.layers, kept):
            for g in set(range(groups)) - set(keep["kv_groups"]):
                layer.self_attn.o_proj.weight[:, g * n_rep * d:(g + 1) * n_rep * d] = 0
            removed = sorted(set(range(reference.config.intermediate_size)) - set(keep["mlp_channels"]))
            layer.mlp.down_proj.weight[:, removed] = 0
    ids = IDS if kind == "llama-taylor" else IDS % 128
    pruned = AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(logits_of(pruned, ids), logits_of(reference, ids), atol=2e-5, rtol=1e-5)
    assert not torch.allclose(logits_of(pruned, ids), logits_of(AutoModelForCausalLM.from_pretrained(base), ids),
                              atol=1e-3)  # and something was removed


# --- the importance, computed again another way ---------------------------------------------


def independent_taylor(base: Path, texts: list[str], max_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """LLM-Pruner's element-wise first order, from scratch: one batch of every calibration text,
    the model's own mean loss over its tokens, plain autograd, then |w · g| summed group by
    group with explicit indices (query heads g·n_rep ... of KV head g)."""
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    model(**encoded, labels=labels).loss.backward()
    n_rep, scores = HEADS // KV, []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp

        def s(weight: torch.Tensor, rows: slice = slice(None), cols: slice = slice(None)) -> float:
            return float((weight[rows, cols] * weight.grad[rows, cols]).abs().sum().detach())

        attention = []
        for g in range(KV):
            kv_rows = slice(g * HEAD_DIM, (g + 1) * HEAD_DIM)
            total = s(a.k_proj.weight, kv_rows) + s(a.v_proj.weight, kv_rows)
            for h in range(g * n_rep, (g + 1) * n_rep):
                rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
                total += s(a.q_proj.weight, rows) + s(a.o_proj.weight, cols=rows)
            attention.append(total)
        mlp = [s(m.gate_proj.weight, slice(c, c + 1)) + s(m.up_proj.weight, slice(c, c + 1))
               + s(m.down_proj.weight, cols=slice(c, c + 1)) for c in range(MLP)]
        scores.append((torch.tensor(attention, dtype=torch.float64), torch.tensor(mlp, dtype=torch.float64)))
    return scores


def test_taylor_importance_matches_plain_autograd_and_decides_what_is_kept(base_dir, data_file):
    config = config_of(base_dir, data_file)
    _, _, kept = built(config)
    calibration = pruning.pruning_recipe(config)["calibration"]
    texts = importance.calibration_texts(calibration)
    expected = independent_taylor(base_dir, texts, calibration["max_tokens"])

    # The module's scores, batch by batch (4 texts a batch), against one batch of all of them.
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    batches = importance.calibration_batches(AutoTokenizer.from_pretrained(base_dir), texts, calibration["max_tokens"])
    assert len(batches) == 3
    ours = importance.taylor_scores(model, batches)
    for (attention, mlp), (want_attention, want_mlp) in zip(ours, expected):
        torch.testing.assert_close(attention, want_attention, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(mlp, want_mlp, rtol=1e-4, atol=1e-9)

    # The folder keeps the top groups of the independent scores, layer by layer.
    for layer_kept, (attention, mlp) in zip(kept, expected):
        assert layer_kept["kv_groups"] == sorted(attention.argsort(descending=True)[:2].tolist())
        assert layer_kept["mlp_channels"] == sorted(mlp.argsort(descending=True)[:20].tolist())
    assert any(k["kv_groups"] != [0, 1] for k in kept)  # not simply the first groups
    assert [k["mlp_channels"] for k in kept][0] != list(range(20))


def test_magnitude_importance_is_the_l2_norm_of_each_groups_weights(base_dir, data_file):
    _, _, kept = built(config_of(base_dir, data_file, importance="magnitude", calibration={}))
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    n_rep = HEADS // KV
    for layer, layer_kept in zip(model.model.layers, kept):
        a, m = layer.self_attn, layer.mlp
        norms = []
        for g in range(KV):
            q_rows = slice(g * n_rep * HEAD_DIM, (g + 1) * n_rep * HEAD_DIM)
            kv_rows = slice(g * HEAD_DIM, (g + 1) * HEAD_DIM)
            weights = [a.q_proj.weight[q_rows], a.k_proj.weight[kv_rows], a.v_proj.weight[kv_rows],
                       a.o_proj.weight[:, q_rows]]
            norms.append(float(torch.cat([w.reshape(-1) for w in weights]).norm().detach()))
        channels = [float(torch.cat([m.gate_proj.weight[c], m.up_proj.weight[c], m.down_proj.weight[:, c]]).norm().detach())
                    for c in range(MLP)]
        assert layer_kept["kv_groups"] == sorted(torch.tensor(norms).argsort(descending=True)[:2].tolist())
        assert layer_kept["mlp_channels"] == sorted(torch.tensor(channels).argsort(descending=True)[:20].tolist())


# --- the cache under concurrent builds --------------------------------------------------------

BUILD = """
import json, os, sys, time
from pathlib import Path
from trainables import pruning, pruning_importance as importance
recipe, ready, go = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.005)
started = time.time()
folder, built = pruning._ensure(recipe)
print(json.dumps({"folder": str(folder), "built": built, "started": started, "ended": time.time(),
                  "complete": (folder / ".complete").is_file()}))
"""


@pytest.mark.subprocess
def test_two_processes_asking_at_once_build_once_and_both_get_the_finished_folder(base_dir, data_file, tmp_path):
    cache = tmp_path / "cache"  # a cache of their own: nothing built yet
    recipe = pruning.pruning_recipe(config_of(base_dir, data_file, mlp_ratio=0.25))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}, **OFFLINE,
           "RAYSEARCH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", BUILD, json.dumps(recipe), str(tmp_path / f"ready{i}"), str(go)],
                                  env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):  # both imported, waiting
        assert time.time() < deadline and all(p.poll() is None for p in processes), "a builder did not start"
        time.sleep(0.01)
    go.touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["built"] for r in results) == [False, True]  # one build
    builder = next(r for r in results if r["built"])
    waiter = next(r for r in results if not r["built"])
    assert waiter["started"] < builder["ended"] <= waiter["ended"] + 0.5  # it asked during the build and waited
    assert results[0]["folder"] == results[1]["folder"] and all(r["complete"] for r in results)
    assert sorted(p.name for p in (cache / "models").iterdir()) == sorted(
        [Path(builder["folder"]).name, Path(builder["folder"]).name + ".lock"])  # no temporary folder left
    record = json.loads((Path(builder["folder"]) / pruning.RECIPE_FILE).read_text())
    assert record["recipe"] == recipe


# --- bad recipes: exit code 2, nothing written ------------------------------------------------


def experiment_file(tmp_path: Path, base: Path | str, data: Path, pruning_section: dict[str, Any],
                    task_type: str = "causal_lm") -> Path:
    task = {"type": task_type, "dataset": str(data)} if task_type == "causal_lm" else {"type": task_type}
    objective = "val_answer_accuracy" if task_type == "causal_lm" else "val_accuracy"
    data = {"name": "bad-pruning", "model": str(base), "task": task, "pruning": pruning_section,
            "search": {"space": {"rank": {"choice": [4]}}, "objectives": {objective: "max"}}}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


BAD = {
    "ratio-1": ({"ratio": 1.0}, "pruning.ratio = 1.0", "must be in (0, 1)"),
    "ratio-negative": ({"ratio": -0.2}, "pruning.ratio = -0.2", "must be in (0, 1)"),
    "mlp-ratio-1": ({"ratio": 0.5, "mlp_ratio": 1}, "pruning.mlp_ratio = 1", "must be in [0, 1)"),
    "no-ratio": ({"importance": "taylor"}, "pruning.ratio: required", "in (0, 1)"),
    "no-kv-group-left": ({"ratio": 0.9}, "pruning.ratio = 0.9", "would leave none of the 3 KV groups"),
    "importance": ({"ratio": 0.5, "importance": "fisher"}, "pruning.importance = 'fisher'", "'taylor' or 'magnitude'"),
    "no-such-file": ({"ratio": 0.5, "calibration": {"data": "/no/such/calib.jsonl"}},
                     "pruning.calibration.data = '/no/such/calib.jsonl'", "no such file"),
    "too-few-examples": ({"ratio": 0.5, "calibration": {"examples": 25}}, "pruning.calibration.examples = 25",
                         "has 24 readable record(s)"),
    "encoder": ({"ratio": 0.5}, "model = 'builtin:minilm'", "BERT encoder"),
    "classification": ({"ratio": 0.5}, "task.type = 'classification'", "needs task.type causal_lm"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_recipe_exits_2_naming_the_field_and_writes_nothing(case, base_dir, data_file, tmp_path, monkeypatch):
    section, where, says = BAD[case]
    monkeypatch.chdir(tmp_path)
    base, task_type = base_dir, "causal_lm"
    if case == "encoder":
        base, task_type = "builtin:minilm", "classification"
    elif case == "classification":
        task_type = "classification"
    path = experiment_file(tmp_path, base, data_file, section, task_type)
    result = CliRunner().invoke(app, ["run", "--space", str(path), "--storage", str(tmp_path / "results")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert where in output and says in output, output
    assert "Traceback" not in result.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (pruning.cache_dir() / "models").exists() or not any(
        p.name.startswith("pruned-bad") for p in (pruning.cache_dir() / "models").iterdir())


def test_the_shipped_sheared_llama_space_prunes_a_quarter_with_its_own_records():
    spec = load_spec(ROOT / "search_spaces" / "pruned_llama.yaml")
    assert spec.model == "princeton-nlp/Sheared-LLaMA-1.3B" and spec.task.type == "causal_lm"
    assert spec.pruning.effective() == (0.25, 0.25) and spec.pruning.importance == "taylor"
    recipe = pruning.pruning_recipe(pruning_config(spec))
    calibration = recipe["calibration"]
    assert calibration["data"].endswith("commonsense/ARC-Easy.train.json") and calibration["test_fraction"] == 0.2
    assert pruning.kept_counts({"num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 5504},
                               0.25, 0.25) == (12, 4128)  # Sheared-LLaMA-1.3B's shape
    if Path(calibration["data"]).is_file():  # the shared data is there on this machine
        assert importance.calibration_problems(calibration) == []


# --- a trial on the pruned base, its MLflow run and its export ---------------------------------


def trial_spec(base: Path, data: Path) -> Any:
    return spec_from_dict({
        "name": "pruned-trial", "model": str(base),
        "task": {"type": "causal_lm", "dataset": str(data), "max_length": 48, "prompt_template": "{instruction}\nA: ",
                 "max_eval_examples": 4,
                 "max_generation_examples": 2, "max_new_tokens": 4},
        "pruning": {"attention_ratio": 0.34, "mlp_ratio": 0.5, "calibration": {"examples": 10, "max_tokens": 24,
                                                                                 "seed": 1}},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2, "eval_every_steps": 100},
        "adapter": {"target_modules": ["q_proj", "v_proj", "down_proj"]},
        "search": {"space": {"rank": {"choice": [4]}}, "objectives": {"val_answer_accuracy": "max", "adapter_params": "min"}},
    })


def test_a_trial_of_a_pruning_experiment_trains_on_the_cached_pruned_base(base_dir, data_file, tmp_path):
    from test_loop import FakeSession

    from raysearch.search.tuner import base_config
    from trainables import loop
    from trainables.trial import trial_config

    spec = trial_spec(base_dir, data_file)
    folder = pruning.pruned_folder(pruning.pruning_recipe(pruning_config(spec)))
    config = trial_config(base_config(spec, str(tmp_path)), {"rank": 4})
    assert config["pruning"] == spec.pruning.model_dump()
    session = FakeSession(tmp_path / "trial")
    loop.run_loop(config, session)
    last, checkpoint = session.reports[-1]
    assert last["final"] and (folder / COMPLETE_MARKER).is_file()
    adapter = json.loads((checkpoint / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(folder)
    # The adapter was sized on the pruned layers: q_proj's B has 4 query heads' rows, down_proj's A 20 channels.
    from safetensors.torch import load_file

    weights = load_file(checkpoint / "adapter" / "adapter_model.safetensors")
    q_b = next(v for k, v in weights.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    down_a = next(v for k, v in weights.items() if "layers.0.mlp.down_proj.lora_A" in k)
    assert q_b.shape == (4 * HEAD_DIM, 4) and down_a.shape == (4, 20)


LOAD_AND_RUN = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

adapter, ids = sys.argv[1], json.loads(sys.argv[2])
base = json.load(open(adapter + "/adapter_config.json"))["base_model_name_or_path"]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids)).logits
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("trainables", "raysearch"))
print(json.dumps({"base": base, "logits": logits.tolist(), "ours": ours}))
"""


@pytest.mark.subprocess
def test_mlflow_records_the_recipe_and_the_export_reproduces_the_trial_in_a_fresh_process(base_dir, data_file, tmp_path):
    from mlflow.tracking import MlflowClient
    from ray.tune import Checkpoint
    from test_tracking import FakeTrial

    from raysearch import api
    from raysearch.records.export_trial import experiment_text
    from raysearch.records.mlflow_writer import MlflowTracking
    from raysearch.records.run_fields import pruning_fields
    from raysearch.search.driver import flat_params, pruning_record
    from trainables.adapters import ADAPTERS
    from trainables.models import load_causal_lm

    spec = trial_spec(base_dir, data_file)
    record = pruning_record(spec)
    folder = Path(record["folder"])

    # The trial's model: the pruned base (as a trial loads it), a LoRA trained 3 steps.
    model, _ = load_causal_lm(pruning.model_source(pruning_config(spec)))
    adapter = ADAPTERS["lora"]({**spec.adapter.model_dump(), "rank": 4}, "causal_lm", total_steps=3)
    model = adapter.attach(model)
    optimizer = torch.optim.AdamW(adapter.param_groups(model, 5e-2, 0.0))
    for _ in range(3):
        model(input_ids=IDS, labels=IDS.masked_fill(IDS == 0, -100)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    expected = logits_of(model, IDS)
    checkpoint = tmp_path / "checkpoint"
    adapter.export(model, checkpoint / "adapter")

    # The search's MLflow records, written by the driver's callback.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    callback = MlflowTracking(uri, spec.name, spec.search.objectives, flat_params(spec), experiment_file=experiment_text(spec),
                              trial_fields=pruning_fields(record))
    callback.setup()
    trial = FakeTrial("t0", {"rank": 4})
    callback.on_trial_start(0, [], trial)
    trial.last_result = {"step": 3, "val_loss": 1.0, "val_answer_accuracy": 0.5, "adapter_params": 100, "final": True,
                         "diverged": False}
    callback.on_trial_result(0, [], trial, trial.last_result)
    trial.checkpoint = Checkpoint.from_directory(str(checkpoint))
    callback.on_trial_complete(0, [], trial)
    callback.close()
    run = MlflowClient(uri).get_run(callback._run_ids["t0"])
    assert {k: run.data.params[k] for k in ("pruning.importance", "pruning.attention_ratio", "pruning.mlp_ratio",
                                            "pruning.calibration.data", "pruning.calibration.examples",
                                            "pruning.calibration.seed", "pruning.base_model")} == {
        "pruning.importance": "taylor", "pruning.attention_ratio": "0.34", "pruning.mlp_ratio": "0.5",
        "pruning.calibration.data": str(data_file), "pruning.calibration.examples": "10",
        "pruning.calibration.seed": "1", "pruning.base_model": str(base_dir)}
    assert run.data.tags["raysearch.pruned_base"] == str(folder)
    assert run.data.tags["raysearch.pruning_hash"] == record["hash"]

    exported = api.export(spec.name, tmp_path / "out", mlflow_uri=uri)
    assert exported.base == folder
    assert json.loads((exported.adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(folder)
    named = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert named["base_folder"] == str(folder) and named["hash"] == record["hash"]
    assert named["recipe"] == record["recipe"] and named["parameters"]["after"] < named["parameters"]["before"]

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}, **OFFLINE}
    done = subprocess.run([sys.executable, "-I", "-c", LOAD_AND_RUN, str(exported.adapter), json.dumps(IDS.tolist())],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ours"] == [] and result["base"] == str(folder)
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(expected, logits_of(AutoModelForCausalLM.from_pretrained(folder), IDS), atol=1e-4)

    # A trial whose recipe no longer builds the same base (the calibration file changed) is refused.
    original = data_file.read_text()
    try:
        data_file.write_text(original.replace("harbour", "harbor"))
        with pytest.raises(api.RaysearchError, match="recipe hash"):
            api.export(spec.name, tmp_path / "out2", mlflow_uri=uri)
    finally:
        data_file.write_text(original)


@pytest.mark.slow
def test_smollm2_pruned_by_taylor_keeps_a_language_model_where_magnitude_does_not():
    """The real check (benchmarks/pruned_smollm2.py, minutes): SmolLM2-135M with 1 of its 3 KV
    groups and half its MLP channels removed; docs/pruning.md has the numbers of one run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pruned_smollm2", ROOT / "benchmarks" / "pruned_smollm2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main([])
    assert rows["full"]["parameters"] == 134_515_008
    for name in ("taylor", "magnitude"):
        assert rows[name]["parameters"]["after"] == 85_854_528
        assert rows[name]["shape"] == {"layers": 30, "attention_heads": 6, "kv_groups": 2, "head_dim": 64,
                                       "intermediate_size": 768}
    for source, full in rows["full"]["perplexity"].items():
        assert full < rows["taylor"]["perplexity"][source] < rows["magnitude"]["perplexity"][source] / 10
