"""What a pruned base model's importance is measured on and how (trainables/pruning.py builds it):
the calibration records (read with the stdlib, so the driver's preflight counts exactly what the
build will read), and the per-layer scores of every KV group and MLP channel.

- `taylor`: LLM-Pruner's element-wise first order, the sum over a group's weights of |w · dL/dw|,
  L the mean next-token loss over every token of the calibration texts. Gradients accumulate
  batch by batch, each batch's summed loss divided by the tokens of all batches, so a score is
  the whole set's whatever the batch size.
- `magnitude`: the L2 norm of the group's weights.

A KV group is k_proj's and v_proj's rows of one key/value head, q_proj's rows of the query heads
that share it (query head h uses KV head h // n_rep, transformers' `repeat_kv`) and o_proj's
columns of those heads; an MLP channel is a row of gate_proj and up_proj and a column of
down_proj. Computed here rather than with `tp.importance.GroupTaylorImportance`: torch-pruning's
graph does not form GQA's groups (trainables/pruning.py says why), and a group's score is then
exactly the documented sum over its four projections.

torch is imported inside the functions that need it."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from trainables.files import read_json_records

CALIBRATION_BATCH = 4
CALIBRATION_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")


# --- calibration records: stdlib, so preflight counts what the build will read ---------------


def calibration_text(record: Mapping[str, Any]) -> str | None:
    """A record's calibration text: its `text`, else the Alpaca prompt of its instruction (and
    input) followed by its `output`; None when it has neither."""
    text = record.get("text")
    if isinstance(text, str) and text.strip():
        return text
    instruction, output = record.get("instruction"), record.get("output")
    if instruction is None or not str(instruction).strip() or output is None or not str(output).strip():
        return None
    extra = str(record.get("input") or "")
    # The wording of trainables/instructions.py's ALPACA prompts (that module imports torch).
    if extra.strip():
        prompt = ("Below is an instruction that describes a task, paired with an input that provides further "
                  "context. Write a response that appropriately completes the request.\n\n"
                  f"### Instruction:\n{instruction}\n\n### Input:\n{extra}\n\n### Response:\n")
    else:
        prompt = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                  f"the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
    return prompt + str(output)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of a calibration file, in file order (csv/tsv through the csv module, as
    trainables/records.py reads them for preflight; parquet through pyarrow)."""
    from trainables.records import parquet_records, table_rows

    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        yield from read_json_records(path)
    elif suffix in (".csv", ".tsv"):
        rows = table_rows(path)
        head = next(rows, None)
        if head is not None:
            yield from (dict(zip(head[1], row)) for _, row in rows)
    elif suffix == ".parquet":
        yield from parquet_records(path, ["text", "instruction", "input", "output"])
    else:
        raise ValueError(f"unsupported file type {suffix!r}; calibration data is one of {', '.join(CALIBRATION_SUFFIXES)}")


def held_out_indices(rows: int, fraction: float, seed: int) -> set[int]:
    """The records of a file of `rows` that the experiment's test split takes (the same draw as
    trainables/data.py TestSplit.carve, which trials make)."""
    if fraction <= 0:
        return set()
    from datasets import Dataset

    from trainables.data import TestSplit

    _, test = TestSplit(fraction, seed).carve(Dataset.from_dict({"index": list(range(rows))}))
    return set(test["index"]) if test is not None else set()


def calibration_problems(calibration: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field of `pruning.calibration`, why) when a recipe's calibration data cannot give
    `examples` texts (stdlib only: the driver's preflight calls it); [] when it can. With a test
    split to leave out, its size is taken off the count (preflight checks every record of the
    experiment's own file readable)."""
    from trainables.records import held_out_size

    data = calibration.get("data")
    if not data:
        return [("data", "no calibration data: task.dataset's first source is not a local file of records (it is "
                 "hf:, or a table read through `instruction` templates); set pruning.calibration.data to a "
                 ".json/.jsonl/.csv/.tsv/.parquet file with `text`, or `instruction` and `output`, per record")]
    path = Path(data)
    if not path.is_file():
        return [("data", "no such file; give a .json/.jsonl/.csv/.tsv/.parquet file of records with `text`, or "
                 "`instruction` and `output`")]
    if path.suffix.lower() not in CALIBRATION_SUFFIXES:
        return [("data", f"unsupported file type {path.suffix!r}; calibration data is one of "
                 f"{', '.join(CALIBRATION_SUFFIXES)}")]
    try:
        records = list(read_records(path))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        return [("data", f"cannot be read: {error}")]
    readable = sum(calibration_text(record) is not None for record in records)
    fraction = float(calibration.get("test_fraction") or 0.0)
    held_out = held_out_size(len(records), fraction) if fraction > 0 and records else 0
    usable = max(0, readable - held_out)
    wanted = int(calibration.get("examples") or 0)
    if usable < wanted:
        left = f", less the {held_out} of the test split" if held_out else ""
        return [("examples", f"more than the calibration data holds: {path} has {usable} readable record(s) "
                 f"({readable} with `text`, or `instruction` and `output`{left}). Allowed: 1..{usable}; lower "
                 "it or give more data")]
    return []


def calibration_texts(calibration: Mapping[str, Any]) -> list[str]:
    """The `examples` texts the importance is measured on: the readable records left after the
    test split, `examples` of them drawn with `seed`, in file order."""
    problems = calibration_problems(calibration)
    if problems:
        field, why = problems[0]
        raise ValueError(f"pruning.calibration.{field} ({calibration.get(field)!r}): {why}")
    records = list(read_records(Path(calibration["data"])))
    held_out = held_out_indices(len(records), float(calibration.get("test_fraction") or 0.0),
                                int(calibration.get("test_seed") or 0))
    readable = [i for i, r in enumerate(records) if i not in held_out and calibration_text(r) is not None]
    chosen = sorted(random.Random(int(calibration["seed"])).sample(readable, int(calibration["examples"])))
    return [calibration_text(records[i]) for i in chosen]  # type: ignore[misc]



# --- importance -------------------------------------------------------------------------


def num_kv_groups(config: Any) -> int:
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


def head_dim_of(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def calibration_batches(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[dict[str, Any]]:
    """Right-padded batches of `CALIBRATION_BATCH` texts with labels (-100 on padding), each text
    cut to `max_tokens` tokens (the tokenizer's BOS included)."""
    import torch

    batches = []
    for start in range(0, len(texts), CALIBRATION_BATCH):
        ids = [tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
               for text in texts[start:start + CALIBRATION_BATCH]]
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), int(tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, sequence in enumerate(ids):
            input_ids[row, :len(sequence)] = torch.tensor(sequence)
            mask[row, :len(sequence)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": mask,
                        "labels": input_ids.masked_fill(mask == 0, -100)})
    return batches


def layers_of(model: Any) -> list[Any]:
    return list(model.model.layers)


def projections(layer: Any) -> dict[str, Any]:
    attention, mlp = layer.self_attn, layer.mlp
    return {"q": attention.q_proj, "k": attention.k_proj, "v": attention.v_proj, "o": attention.o_proj,
            "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}


def group_scores(elementwise: Mapping[str, Any], kv_groups: int, head_dim: int) -> tuple[Any, Any]:
    """Per-layer sums of an element-wise score (|w·g| or w²) over each KV group and each MLP
    channel. `elementwise` maps q/k/v/o/gate/up/down to tensors shaped like their weights, and
    q_bias/k_bias/v_bias to their biases where the layers have them (Qwen2).

    Query head h uses KV head h // n_rep (transformers' `repeat_kv`), so group g's query rows
    are the contiguous block g·n_rep·d ... (g+1)·n_rep·d - 1, and o_proj's columns the same."""
    q, k, v, o = (elementwise[name] for name in "qkvo")
    q_rows = q.sum(1) + (elementwise["q_bias"] if "q_bias" in elementwise else 0)
    k_rows = k.sum(1) + (elementwise["k_bias"] if "k_bias" in elementwise else 0)
    v_rows = v.sum(1) + (elementwise["v_bias"] if "v_bias" in elementwise else 0)
    attention = (q_rows.view(kv_groups, -1).sum(1) + k_rows.view(kv_groups, head_dim).sum(1)
                 + v_rows.view(kv_groups, head_dim).sum(1) + o.sum(0).view(kv_groups, -1).sum(1))
    mlp = elementwise["gate"].sum(1) + elementwise["up"].sum(1) + elementwise["down"].sum(0)
    return attention, mlp


def _elementwise(layer: Any, value: Any) -> dict[str, Any]:
    """`value(parameter)` for every weight (and q/k/v bias) of the layer's seven projections."""
    out = {}
    for name, module in projections(layer).items():
        out[name] = value(module.weight)
        if name in "qkv" and getattr(module, "bias", None) is not None:
            out[f"{name}_bias"] = value(module.bias)
    return out


def taylor_scores(model: Any, batches: Sequence[Mapping[str, Any]]) -> list[tuple[Any, Any]]:
    """Per layer, (KV-group scores, MLP-channel scores): the sum of |w · ∂L/∂w| over each
    group's weights, L the mean next-token loss over every calibration token."""
    import torch
    import torch.nn.functional as F

    model.eval()  # no dropout: the loss of the model as it is
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    layers = layers_of(model)
    for layer in layers:
        for module in projections(layer).values():
            for parameter in module.parameters():
                parameter.requires_grad_(True)
                parameter.grad = None
    device = next(model.parameters()).device
    total = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    if total == 0:
        raise ValueError("the calibration texts hold no token to predict (each is one token long); "
                         "raise pruning.calibration.max_tokens")
    for batch in batches:
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        labels = batch["labels"].to(device)
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum")
        (loss / total).backward()
    config = model.config
    scores = []
    with torch.no_grad():
        for layer in layers:
            elementwise = _elementwise(layer, lambda p: (p * p.grad).abs().double().cpu())
            scores.append(group_scores(elementwise, num_kv_groups(config), head_dim_of(config)))
            for module in projections(layer).values():
                for parameter in module.parameters():
                    parameter.grad = None
                    parameter.requires_grad_(False)
    return scores


def magnitude_scores(model: Any) -> list[tuple[Any, Any]]:
    """Per layer, (KV-group scores, MLP-channel scores): the L2 norm of each group's weights."""
    import torch

    config = model.config
    with torch.no_grad():
        return [tuple(s.sqrt() for s in group_scores(_elementwise(layer, lambda p: p.double().pow(2).cpu()),
                                                       num_kv_groups(config), head_dim_of(config)))
                for layer in layers_of(model)]


def top_indices(scores: Any, keep: int) -> list[int]:
    """The `keep` highest-scoring indices, ascending (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])
