"""What differs between task types, behind four calls the training loop makes.

`make_task(task_cfg, device, seed)` gives an object with:
- `setup(model_name)`: the model and the train/validation tensors
  (dicts of equal-length tensors with "labels"; the loop slices them into batches);
- `adapter_config(adapter_cfg, model)`: the adapter config with `task.target`'s layers;
- `loss(model, batch)`: the training loss of one worker's slice of a global batch;
- `evaluate(model, val_set, batch_size, rank, world)`: `val_loss` and `val_<metric>`,
  the same numbers on every worker.

`classification`: a sequence-classification head, argmax accuracy/F1/MCC, every
worker evaluates the whole validation set. `causal_lm`: instruction tuning, loss
on the response tokens, averaged over the response tokens of the *global* batch
(so N workers train exactly like one); evaluation splits the validation records
across workers: token-level `val_loss`, then on at most `max_generation_examples` records
the answer by `task.scoring` (greedy generation read by trainables/answers.py, the likeliest
label, or the likeliest option text as lm-evaluation-harness scores multiple choice,
trainables/choices.py) compared with the gold one: `val_answer_accuracy`, the mean over the
sources of each source's accuracy (one source: its accuracy), and `val_answer_parsed`, the
share of records for which an answer was found at all.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ContextManager

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import f1_score, matthews_corrcoef
from torch import nn

from trainables.answers import AnswerComplete, AnswerPattern, answer_pattern, candidate_response, common_prefix_length
from trainables.choices import Choice, decide, split_pair
from trainables.data import load_splits, num_labels, tokenize_splits
from trainables.instruction_data import load_instruction_splits
from trainables.instructions import IGNORE_INDEX, EncodedSplit, encode_records, fixed_length, left_padded
from trainables.models import (
    enable_gradient_checkpointing,
    load_causal_lm,
    load_classifier,
    resolve_dtype,
    resolve_target_modules,
)

Tensors = dict[str, torch.Tensor]


def make_task(task_cfg: dict[str, Any], device: torch.device, seed: int) -> ClassificationTask | CausalLMTask:
    kind = task_cfg.get("type", "classification")
    if kind == "classification":
        return ClassificationTask(task_cfg, device, seed)
    if kind == "causal_lm":
        return CausalLMTask(task_cfg, device, seed)
    raise ValueError(f"unknown task type {kind!r}; allowed: classification, causal_lm")


class _Task:
    def __init__(self, cfg: dict[str, Any], device: torch.device, seed: int) -> None:
        self.cfg, self.device, self.seed = cfg, device, seed
        self.dtype = resolve_dtype(cfg.get("precision", "auto"), device)

    def autocast(self) -> ContextManager:
        """bf16: the frozen base is stored in bf16 and every forward runs under autocast."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def adapter_config(self, adapter_cfg: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        target = self.cfg.get("target", "attention")
        if adapter_cfg.get("target_modules") or target == "attention":
            return adapter_cfg  # the variant resolves the attention default itself
        return {**adapter_cfg, "target_modules": resolve_target_modules(model, None, target)}


class ClassificationTask(_Task):
    def setup(self, model_name: str, *, trust_remote_code: bool = False) -> tuple[nn.Module, Tensors, Tensors]:
        splits = load_splits(self.cfg, seed=self.seed)
        model, tokenizer = load_classifier(model_name, num_labels(splits), trust_remote_code=trust_remote_code)
        model.to(self.dtype)
        if self.cfg.get("gradient_checkpointing"):
            enable_gradient_checkpointing(model)
        data = tokenize_splits(splits, tokenizer, self.cfg.get("text_fields"), self.cfg["max_length"])
        columns = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in data["train"].column_names]
        train_set = data["train"].with_format("torch", columns=columns)[:]
        return model, train_set, data["validation"].with_format("torch", columns=columns)[:]

    def loss(self, model: nn.Module, batch: Tensors) -> torch.Tensor:
        with self.autocast():
            return model(**batch).loss.float()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, val_set: Tensors, batch_size: int, rank: int, world: int) -> dict[str, float]:
        """Loss and metric on the whole validation set (every worker computes the same)."""
        model.eval()
        losses, preds = [], []
        n = len(val_set["labels"])
        for start in range(0, n, batch_size):
            batch = {k: v[start : start + batch_size].to(self.device) for k, v in val_set.items()}
            with self.autocast():
                out = model(**batch)
            losses.append(out.loss.item() * len(batch["labels"]))
            preds.append(out.logits.argmax(-1).cpu())
        metric = self.cfg.get("metric", "accuracy")
        labels, predicted = val_set["labels"].numpy(), torch.cat(preds).numpy()
        return {"val_loss": float(sum(losses) / n), f"val_{metric}": score(metric, labels, predicted)}


def score(metric: str, labels: np.ndarray, predicted: np.ndarray) -> float:
    if metric == "accuracy":
        return float((labels == predicted).mean())
    if metric == "f1":
        average = "binary" if len(np.unique(labels)) <= 2 else "macro"
        return float(f1_score(labels, predicted, average=average, zero_division=0))
    if metric == "matthews":
        return float(matthews_corrcoef(labels, predicted))
    raise ValueError(f"unknown metric {metric!r}; allowed: accuracy, f1, matthews")


@dataclass
class AnswerRecord:
    """A record answered at evaluation: its prompt, gold answer and what `loglik` chooses from."""

    prompt: list[int]
    gold: str
    output: str  # the gold response; a candidate's response is it with the gold answer swapped
    candidates: list[str]
    source: str
    choice: Choice | None = None  # its multiple-choice item, when it offers options
    option_pairs: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (context, continuation) ids


class CausalLMTask(_Task):
    tokenizer: Any
    pattern: AnswerPattern
    answer_records: list[AnswerRecord]  # the validation records answered at each evaluation

    def setup(self, model_name: str, *, trust_remote_code: bool = False) -> tuple[nn.Module, Tensors, Tensors]:
        splits = load_instruction_splits(self.cfg, seed=self.seed)
        model, self.tokenizer = load_causal_lm(model_name, dtype=self.dtype, trust_remote_code=trust_remote_code)
        if self.cfg.get("gradient_checkpointing"):
            enable_gradient_checkpointing(model)
        train = self.encode(splits["train"])
        val = self.encode(splits["validation"])
        self.pattern = answer_pattern(self.cfg.get("answer_pattern", "auto"), [a for a in val.answers if a])
        self.source_answers = gold_answers_by_source([train, val], self.pattern)
        self.answer_records = self.to_answer_records(val, self.cfg.get("max_generation_examples"))
        if not self.answer_records:
            raise ValueError("no validation record has an `answer`, and the answer pattern finds none in `output`")
        return model, train.tensors, val.tensors

    def encode(self, records: Any) -> EncodedSplit:
        return encode_records(records, self.cfg.get("prompt_template", "alpaca"), self.tokenizer, self.cfg["max_length"],
                              train_on=self.cfg.get("train_on", "label"))

    def to_answer_records(self, split: EncodedSplit, limit: int | None = None) -> list[AnswerRecord]:
        """The first `limit` records of `split` that have a gold answer (in `answer`, or found in `output`)."""
        records = []
        for i, gold in enumerate(gold_answers(split, self.pattern)):
            if not gold:
                continue
            source = split.sources[i] if split.sources else ""
            candidates = split.options[i] if split.options and split.options[i] else self.source_answers.get(source, [])
            choice = split.choices[i] if split.choices else None
            pairs = [split_pair(self.tokenizer, choice.context, choice.continuation(k))
                     for k in range(len(choice.options))] if choice is not None else []
            records.append(AnswerRecord(split.prompts[i], gold, split.outputs[i], list(candidates), source, choice, pairs))
            if limit and len(records) >= limit:
                break
        return records

    def loss(self, model: nn.Module, batch: Tensors) -> torch.Tensor:
        """Summed response-token loss / response tokens of the global batch, times the world size:
        DDP's gradient average then equals one worker's gradient on the whole global batch."""
        batch = trim_padding(batch)
        logits, labels = response_logits(model, batch, self.autocast())
        loss_sum, tokens = response_loss(logits, labels)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        global_tokens = sum_across_workers(float(tokens), self.device).clamp(min=1.0).to(loss_sum.dtype)
        return loss_sum * world / global_tokens

    @torch.no_grad()
    def evaluate(self, model: nn.Module, val_set: Tensors, batch_size: int, rank: int, world: int) -> dict[str, float]:
        model.eval()
        loss_sum, tokens = 0.0, 0
        mine = torch.arange(rank, len(val_set["labels"]), world)
        for start in range(0, len(mine), batch_size):
            batch = trim_padding({k: v[mine[start : start + batch_size]].to(self.device) for k, v in val_set.items()})
            logits, labels = response_logits(model, batch, self.autocast())
            batch_loss, batch_tokens = response_loss(logits, labels)
            loss_sum, tokens = loss_sum + batch_loss.item(), tokens + batch_tokens
        mine_records = self.answer_records[rank::world]
        correct, parsed = self.judge(model, mine_records, batch_size)
        names = sorted({r.source for r in self.answer_records})
        per_source = [0.0] * (2 * len(names))
        for record, hit in zip(mine_records, correct):
            per_source[2 * names.index(record.source)] += float(hit)
            per_source[2 * names.index(record.source) + 1] += 1.0
        totals = sum_across_workers([loss_sum, tokens, sum(parsed), *per_source], self.device).tolist()
        n = len(self.answer_records)
        accuracies = [totals[3 + 2 * k] / totals[4 + 2 * k] for k in range(len(names)) if totals[4 + 2 * k]]
        return {"val_loss": totals[0] / max(totals[1], 1.0), "val_answer_accuracy": float(np.mean(accuracies)),
                "val_answer_parsed": totals[2] / n}

    def judge(self, model: nn.Module, records: list[AnswerRecord], batch_size: int,
              picks: dict[int, tuple[int, int]] | None = None) -> tuple[list[bool], list[bool]]:
        """(correct, an answer was found) per record, by `task.scoring`. `options`: records with a
        multiple-choice item by the option text (acc or acc_norm, as choices.py says per record;
        `picks` when option_picks already ran), the others by generation."""
        if self.cfg.get("scoring", "generate") != "options":
            predicted = self.answers(model, records, batch_size)
            return [self.pattern.is_correct(p, r.gold) for p, r in zip(predicted, records)], [p is not None for p in predicted]
        correct, parsed = [False] * len(records), [True] * len(records)
        picks = self.option_picks(model, records, batch_size) if picks is None else picks
        free = [i for i, r in enumerate(records) if r.choice is None]
        for i, (raw, normed) in picks.items():
            choice = records[i].choice
            correct[i] = (normed if choice.metric == "acc_norm" else raw) == choice.gold
        if free:
            predicted = self.answers(model, [records[i] for i in free], batch_size, scoring="generate")
            for i, p in zip(free, predicted):
                correct[i], parsed[i] = self.pattern.is_correct(p, records[i].gold), p is not None
        return correct, parsed

    def option_picks(self, model: nn.Module, records: list[AnswerRecord], batch_size: int) -> dict[int, tuple[int, int]]:
        """For each record with a multiple-choice item: (acc's pick, acc_norm's pick)."""
        scores = self.option_scores(model, records, batch_size)
        return {i: decide(values, records[i].choice.options) for i, values in scores.items()}

    @torch.no_grad()
    def option_scores(self, model: nn.Module, records: list[AnswerRecord], batch_size: int) -> dict[int, list[float]]:
        """For each record with a multiple-choice item, every option's summed continuation
        log-likelihood after the context: one sequence per option, batched across records by
        length so that little of a batch is padding."""
        model.eval()
        jobs = [(i, k) for i, r in enumerate(records) if r.choice is not None for k in range(len(r.option_pairs))]
        jobs.sort(key=lambda job: sum(map(len, records[job[0]].option_pairs[job[1]])))
        scores: dict[int, list[float]] = {i: [0.0] * len(r.option_pairs) for i, r in enumerate(records) if r.choice}
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            values = self.response_logprobs(model, [records[i].option_pairs[k] for i, k in chunk])
            for (i, k), value in zip(chunk, values):
                scores[i][k] = value
        return scores

    @torch.no_grad()
    def answers(self, model: nn.Module, records: list[AnswerRecord], batch_size: int,
                scoring: str | None = None) -> list[str | None]:
        """Each record's answer (normalised by the pattern; None when none was found), by
        `scoring` (default `task.scoring`): greedy generation, or the most likely candidate label."""
        model.eval()
        if (scoring or self.cfg.get("scoring", "generate")) == "loglik":
            return [self.pattern.normalize(a) if a is not None else None
                    for a in self.most_likely(model, records, batch_size)]
        predicted: list[str | None] = []
        for start in range(0, len(records), batch_size):
            texts = self.generate(model, [r.prompt for r in records[start : start + batch_size]])
            predicted.extend(self.pattern.extract(text) for text in texts)
        return predicted

    def generate(self, model: nn.Module, prompts: list[list[int]]) -> list[str]:
        """Greedy continuations of the prompts (the new text only): left-padded batches, KV cache,
        each row done at EOS or once its answer is complete (the whole batch at `max_new_tokens`)."""
        batch = {k: v.to(self.device) for k, v in left_padded(prompts, self.tokenizer.pad_token_id).items()}
        stop = [AnswerComplete(self.pattern, self.tokenizer, batch["input_ids"].shape[1])] if hasattr(self, "pattern") else []
        with self.autocast():
            out = model.generate(**batch, max_new_tokens=self.cfg.get("max_new_tokens", 32), do_sample=False,
                                 use_cache=True, pad_token_id=self.tokenizer.pad_token_id,
                                 eos_token_id=self.tokenizer.eos_token_id, stopping_criteria=stop)
        return self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    def most_likely(self, model: nn.Module, records: list[AnswerRecord], batch_size: int) -> list[str | None]:
        """For each record, the candidate whose response (the gold response with the gold answer
        swapped for the candidate) has the highest summed log-likelihood after the prompt, as
        lm-evaluation-harness scores multiple choice. None for a record without candidates.

        The responses share everything but the answer ("the correct answer is true|false"),
        and the answers usually differ in one last token: then one forward pass of prompt +
        shared part gives every candidate's score from its last position (the shared part adds
        the same log-probability to all); the other records score each candidate in full."""
        shared: list[tuple[int, list[int], list[int], list[str]]] = []  # (record, prefix, last tokens, candidates)
        full: list[tuple[int, str, list[int], list[int]]] = []  # (record, candidate, prompt, response)
        for index, record in enumerate(records):
            responses = [list(self.tokenizer(candidate_response(record.output, record.gold, c),
                                             add_special_tokens=False)["input_ids"]) for c in record.candidates]
            common = common_prefix_length(responses)
            if responses and all(len(r) == common + 1 for r in responses) and len(set(map(tuple, responses))) == len(responses):
                shared.append((index, record.prompt + responses[0][:common], [r[common] for r in responses],
                               record.candidates))
            else:
                full.extend((index, c, record.prompt, r) for c, r in zip(record.candidates, responses))
        best: dict[int, tuple[float, str]] = {}
        for start in range(0, len(shared), batch_size):
            chunk = shared[start : start + batch_size]
            last = self.next_token_logprobs(model, [prefix for _, prefix, _, _ in chunk])
            for row, (index, _, tokens, candidates) in enumerate(chunk):
                scores = last[row, tokens].tolist()
                best[index] = max(zip(scores, candidates), key=lambda pair: pair[0])
        for start in range(0, len(full), batch_size * 2):
            chunk = full[start : start + batch_size * 2]
            scores = self.response_logprobs(model, [(prompt, response) for _, _, prompt, response in chunk])
            for (index, candidate, _, _), value in zip(chunk, scores):
                if index not in best or value > best[index][0]:
                    best[index] = (value, candidate)
        return [best[i][1] if i in best else None for i in range(len(records))]

    def next_token_logprobs(self, model: nn.Module, sequences: list[list[int]]) -> torch.Tensor:
        """Log-probabilities of the token after each sequence (left-padded; logits of the last position only)."""
        batch = {k: v.to(self.device) for k, v in left_padded(sequences, self.tokenizer.pad_token_id).items()}
        positions = (batch["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
        with self.autocast():
            logits = model(**batch, position_ids=positions, logits_to_keep=1).logits
        return torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()

    def response_logprobs(self, model: nn.Module, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """Summed log-probability of each response given its prompt (right-padded, one forward)."""
        width = max(len(p) + len(r) for p, r in pairs)
        rows = [fixed_length(prompt, response, self.tokenizer.pad_token_id, width + 1) for prompt, response in pairs]
        batch = {k: torch.tensor([row[k] for row in rows], device=self.device) for k in rows[0]}
        logits, kept = response_logits(model, batch, self.autocast())
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = kept[:, 1:]
        mask = targets != IGNORE_INDEX
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * mask).sum(dim=1).tolist()


def gold_answers_by_source(splits: list[EncodedSplit], pattern: AnswerPattern) -> dict[str, list[str]]:
    """Every distinct gold answer per source, in first-seen order: `loglik`'s candidates for a
    record whose instruction names no answer format."""
    found: dict[str, dict[str, None]] = {}
    for split in splits:
        for i, gold in enumerate(gold_answers(split, pattern)):
            if gold:
                found.setdefault(split.sources[i] if split.sources else "", {})[gold] = None
    return {source: list(answers) for source, answers in found.items()}


def gold_answers(split: EncodedSplit, pattern: AnswerPattern) -> list[str | None]:
    """Each record's gold answer: its `answer`, else what the pattern reads in its `output`."""
    return [str(answer) if answer else pattern.extract(output) for answer, output in zip(split.answers, split.outputs)]


def response_logits(model: nn.Module, batch: Tensors, autocast: ContextManager) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) from the position before the batch's first response token on: the
    LM head (49k x 576 per position on SmolLM2) runs on the response positions only, not on
    the prompt's, whose logits the loss never reads (`logits_to_keep`, transformers' own)."""
    labelled = (batch["labels"] != IGNORE_INDEX).any(dim=0).nonzero()
    width = batch["labels"].shape[1]
    keep = width - max(0, int(labelled[0]) - 1) if len(labelled) else width
    with autocast:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       logits_to_keep=keep).logits
    return logits, batch["labels"][:, width - keep:]


def trim_padding(batch: Tensors) -> Tensors:
    """Drop the columns that are padding in every row (sequences are right-padded)."""
    width = max(1, int(batch["attention_mask"].sum(dim=1).max()))
    return {k: v[:, :width] for k, v in batch.items()}


def response_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy over the labelled positions, how many there are)."""
    shifted_logits, shifted_labels = logits[:, :-1].float(), labels[:, 1:]
    loss_sum = F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, int((shifted_labels != IGNORE_INDEX).sum())


def sum_across_workers(values: float | list[float], device: torch.device) -> torch.Tensor:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor
