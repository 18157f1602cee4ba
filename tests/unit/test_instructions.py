"""Causal-LM tasks without Ray: prompts, label masking, instruction files, the tiny LLaMA,
the loss and greedy generation, and the experiment-file checks of `task.type: causal_lm`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raysearch.experiment.spec import SpecError, spec_from_dict
from trainables.instruction_data import load_instruction_splits
from trainables.instructions import (
    ALPACA,
    IGNORE_INDEX,
    build_prompt,
    check_template,
    encode_record,
    encode_records,
    left_padded,
    prompt_ids,
)
from trainables.models import (
    enable_gradient_checkpointing,
    ensure_pad_token,
    load_causal_lm,
    resolve_dtype,
    resolve_target_modules,
    tiny_config,
    tiny_llama,
    tiny_llama_tokenizer,
    upcast_trainable,
)
from trainables.tasks import CausalLMTask, response_loss, trim_padding

BOOLQ = Path(__file__).resolve().parents[3] / "shared" / "data" / "commonsense" / "boolq.train.json"
needs_boolq = pytest.mark.skipif(not BOOLQ.is_file(), reason=f"BoolQ not present at {BOOLQ}")
RECORD = {
    "instruction": "Please answer the following question with true or false, question: is the sky blue?\n\n"
                   "Answer format: true/false",
    "input": "",
    "output": "the correct answer is true",
    "answer": "true",
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_llama_tokenizer()


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_llama()


# --- prompts --------------------------------------------------------------------------


def test_alpaca_prompt_is_the_llm_adapters_format():
    assert build_prompt(RECORD) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\n{RECORD['instruction']}\n\n### Response:\n"
    )


def test_alpaca_prompt_shows_the_input_block_only_when_there_is_an_input():
    prompt = build_prompt({**RECORD, "input": "The sky is blue on clear days."})
    assert prompt.startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Input:\nThe sky is blue on clear days.\n\n### Response:\n" in prompt
    assert "### Input" not in build_prompt({**RECORD, "input": "   "})


def test_custom_template_fills_instruction_and_input():
    template = "Q: {instruction}\nContext: {input}\nA:"
    assert build_prompt({"instruction": "why?", "input": "because", "output": "x"}, template) == "Q: why?\nContext: because\nA:"
    assert build_prompt({"instruction": "why?", "output": "x"}, "{{json}} {instruction} ->") == "{json} why? ->"


@pytest.mark.parametrize("template, message", [
    ("Q: {question}\nA:", r"unknown placeholder\(s\) \['question'\]"),
    ("Input: {input}\nA:", "must contain {instruction}"),
    ("Q: {instruction\nA:", "not a valid template"),
])
def test_bad_templates_are_explained(template, message):
    with pytest.raises(ValueError, match=message):
        check_template(template)


def test_chat_template_puts_instruction_and_input_in_the_user_turn(tokenizer):
    chat = tiny_llama_tokenizer()
    chat.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    prompt = build_prompt({**RECORD, "input": "some context"}, "chat", chat)
    assert prompt == f"<user>{RECORD['instruction']}\n\nsome context</user><assistant>"
    with pytest.raises(ValueError, match="has none"):
        build_prompt(RECORD, "chat", tokenizer)


# --- tokens and labels -------------------------------------------------------------------


def test_tiny_llama_tokenizer_is_decoder_style(tokenizer):
    ids = tokenizer("is the sky blue")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3


def test_labels_cover_the_response_and_eos_only(tokenizer):
    row = encode_record(RECORD, "alpaca", tokenizer, max_length=96)
    prompt = prompt_ids(RECORD, "alpaca", tokenizer)
    response = tokenizer(RECORD["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    used = len(prompt) + len(response)
    assert all(len(row[k]) == 96 for k in row)
    assert row["input_ids"][:used] == prompt + response
    assert row["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert row["labels"][len(prompt):used] == response
    assert row["labels"][used:] == [IGNORE_INDEX] * (96 - used)
    assert row["attention_mask"] == [1] * used + [0] * (96 - used)
    labelled = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(labelled, skip_special_tokens=True) == RECORD["output"]


def test_too_long_records_are_cut_at_the_end_or_dropped(tokenizer):
    prompt_length = len(prompt_ids(RECORD, "alpaca", tokenizer))
    cut = encode_record(RECORD, "alpaca", tokenizer, max_length=prompt_length + 2)
    assert sum(label != IGNORE_INDEX for label in cut["labels"]) == 2  # the first two response tokens
    assert encode_record(RECORD, "alpaca", tokenizer, max_length=prompt_length) is None
    split = encode_records([RECORD, {**RECORD, "instruction": "short?"}], "alpaca", tokenizer, prompt_length)
    assert split.dropped == 1 and split.tensors["input_ids"].shape == (1, prompt_length)
    assert split.answers == ["true"] and split.outputs == [RECORD["output"]]
    with pytest.raises(ValueError, match="raise max_length"):
        encode_records([RECORD], "alpaca", tokenizer, max_length=8)


def test_left_padding_for_generation():
    batch = left_padded([[5, 6, 7], [8]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_trim_padding_keeps_the_longest_row():
    batch = {"input_ids": torch.tensor([[1, 2, 0, 0], [1, 0, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]),
             "labels": torch.tensor([[-100, 2, -100, -100], [-100, -100, -100, -100]])}
    assert {k: v.shape[1] for k, v in trim_padding(batch).items()} == {"input_ids": 2, "attention_mask": 2, "labels": 2}


def test_response_loss_is_the_models_own_loss_on_those_labels(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    split = encode_records([RECORD, {**RECORD, "output": "the correct answer is false, surely"}], "alpaca", tokenizer, 96)
    batch = trim_padding(split.tensors)
    with torch.no_grad():
        out = model(**batch)
    loss_sum, tokens = response_loss(out.logits, batch["labels"])
    assert tokens == int((split.tensors["labels"] != IGNORE_INDEX).sum())
    assert (loss_sum / tokens).item() == pytest.approx(out.loss.item(), rel=1e-5)


# --- instruction files ------------------------------------------------------------------


@needs_boolq
def test_boolq_file_loads_as_string_records_with_limits():
    splits = load_instruction_splits({"dataset": str(BOOLQ), "max_train_examples": 50, "max_eval_examples": 10}, seed=0)
    assert (len(splits["train"]), len(splits["validation"])) == (50, 10)
    assert splits["train"].column_names == ["instruction", "input", "output", "answer", "choices", "source"]
    assert set(splits["train"]["source"]) == {"boolq"}
    assert set(splits["train"]["answer"]) <= {"true", "false"}  # strings, not booleans
    assert set(splits["train"]["instruction"]).isdisjoint(splits["validation"]["instruction"])


def test_jsonl_with_only_instruction_and_output(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": f"{i} + 1?", "output": f"It is {i + 1}", "id": i}) for i in range(20)))
    splits = load_instruction_splits({"dataset": str(path)})
    assert (len(splits["train"]), len(splits["validation"])) == (18, 2)
    assert set(splits["train"]["input"]) == {""} and set(splits["train"]["answer"]) == {""}


def test_records_without_output_or_builtin_datasets_are_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"instruction": "a", "response": "b"}] * 4))
    with pytest.raises(ValueError, match=r"need \['output'\]"):
        load_instruction_splits({"dataset": str(path)})
    with pytest.raises(ValueError, match="no built-in dataset"):
        load_instruction_splits({"dataset": "builtin:demo"})


# --- models ---------------------------------------------------------------------------------


def test_attention_and_mlp_target_presets():
    from transformers import AutoModelForCausalLM

    llama = AutoModelForCausalLM.from_config(tiny_config("llama"))
    assert resolve_target_modules(llama) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_target_modules(llama, preset="attention_mlp")[4:] == ["gate_proj", "up_proj", "down_proj"]
    gpt2 = AutoModelForCausalLM.from_config(tiny_config("gpt2"))
    assert resolve_target_modules(gpt2, preset="attention_mlp") == ["c_attn", "c_fc", "c_proj"]
    assert resolve_target_modules(llama, ["q_proj"], preset="attention_mlp") == ["q_proj"]  # explicit wins


def test_attention_mlp_on_an_architecture_without_mlp_names_asks_for_target_modules():
    from transformers import AutoModelForSequenceClassification

    bert = AutoModelForSequenceClassification.from_config(tiny_config("bert"))
    with pytest.raises(ValueError, match="set adapter.target_modules"):
        resolve_target_modules(bert, preset="attention_mlp")


def test_precision_auto_is_fp32_on_cpu():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="allowed: auto, bf16, fp32"):
        resolve_dtype("fp16", torch.device("cpu"))


def test_missing_pad_token_becomes_eos(model_and_tokenizer):
    model, _ = tiny_llama()
    tokenizer = tiny_llama_tokenizer()
    tokenizer.pad_token = None
    model.config.pad_token_id = None
    ensure_pad_token(model, tokenizer)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.config.pad_token_id


def test_load_causal_lm_from_a_saved_folder(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_causal_lm(str(tmp_path), dtype=torch.bfloat16)
    assert loaded.config.model_type == "llama" and next(loaded.parameters()).dtype == torch.bfloat16
    assert loaded_tokenizer("x")["input_ids"] == tokenizer("x")["input_ids"]
    assert loaded.generation_config.pad_token_id == tokenizer.pad_token_id


def _peft_lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def test_bf16_base_keeps_fp32_adapters_and_trains_under_autocast(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    task = CausalLMTask({"precision": "bf16", "max_new_tokens": 4}, torch.device("cpu"), seed=0)
    model, _ = tiny_llama()
    model.to(task.dtype)
    model = _peft_lora(model)
    upcast_trainable(model)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    loss = task.loss(model, encode_records([RECORD], "alpaca", tokenizer, 96).tensors)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _adapter_grads(tokenizer, checkpointing: bool) -> list[torch.Tensor]:
    model, _ = tiny_llama()
    if checkpointing:
        enable_gradient_checkpointing(model)
        assert model.model.layers[0].gradient_checkpointing
    torch.manual_seed(0)
    model = _peft_lora(model)
    model.train()
    task = CausalLMTask({"precision": "fp32"}, torch.device("cpu"), seed=0)
    task.loss(model, encode_records([RECORD], "alpaca", tokenizer, 96).tensors).backward()
    return [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # A's gradient is 0 while B = 0


def test_gradient_checkpointing_gives_the_adapter_the_same_gradients(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    plain, checkpointed = _adapter_grads(tokenizer, False), _adapter_grads(tokenizer, True)
    assert checkpointed and all(g is not None and g.abs().sum() > 0 for g in checkpointed)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)


def test_batched_left_padded_generation_equals_one_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    task = CausalLMTask({"precision": "fp32", "max_new_tokens": 5}, torch.device("cpu"), seed=0)
    task.tokenizer = tokenizer
    prompts = [prompt_ids(RECORD, "alpaca", tokenizer), prompt_ids({**RECORD, "instruction": "is it?"}, "alpaca", tokenizer)]
    model.eval()
    assert task.generate(model, prompts) == [task.generate(model, [p])[0] for p in prompts]


# --- the experiment file --------------------------------------------------------------------

CAUSAL = {
    "model": "builtin:tiny-llama",
    "task": {"type": "causal_lm", "dataset": "data/commonsense.json"},
    "search": {"objectives": {"val_answer_accuracy": "max", "adapter_params": "min"},
               "space": {"rank": {"choice": [4, 8]}}},
}


def _problems(data: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        spec_from_dict(data)
    return {p.path: p.message for p in caught.value.problems}


def test_causal_lm_spec_defaults_to_answer_accuracy():
    spec = spec_from_dict(CAUSAL)
    assert spec.task.metric == "answer_accuracy" and spec.task.prompt_template == "alpaca"
    assert spec.task.answer_pattern == "auto" and spec.task.precision == "auto"
    assert spec_from_dict({**CAUSAL, "search": {**CAUSAL["search"], "early_stopping": {"metric": "val_answer_accuracy"}}})


def test_causal_lm_spec_errors_name_the_field_and_the_fix():
    problems = _problems({**CAUSAL, "model": "builtin:minilm", "task": {
        **CAUSAL["task"], "metric": "accuracy", "text_fields": ["sentence"], "prompt_template": "Q: {question}",
        "answer_pattern": "answer is (", "max_new_tokens": 0, "precision": "fp16", "target": "mlp"}})
    assert "unknown placeholder" in problems["task.prompt_template"]
    assert "not a valid regular expression" in problems["task.answer_pattern"]
    assert "must be > 0" in problems["task.max_new_tokens"]
    assert "'auto', 'bf16' or 'fp32'" in problems["task.precision"]
    assert "'attention', 'attention_mlp' or 'all_linear'" in problems["task.target"]
    problems = _problems({**CAUSAL, "model": "builtin:minilm", "task": {**CAUSAL["task"], "metric": "accuracy",
                                                                          "text_fields": ["sentence"]}})
    assert problems["task.metric"] == "task.type causal_lm reports 'answer_accuracy'"
    assert problems["task.text_fields"] == "only used when task.type is classification"
    assert "builtin:minilm is an encoder" in problems["model"]


def test_causal_lm_needs_instruction_data_and_its_own_objectives():
    problems = _problems({**CAUSAL, "task": {"type": "causal_lm"}, "search": {"space": {"rank": {"choice": [4]}}}})
    assert "needs instruction records" in problems["task.dataset"]
    assert "set search.objectives" in problems["search.objectives.val_accuracy"]


def test_classification_rejects_causal_lm_fields_and_metric():
    problems = _problems({"model": "builtin:tiny-llama", "task": {"metric": "answer_accuracy", "answer_pattern": "number"},
                          "search": {"space": {"rank": {"choice": [4]}}}})
    assert problems["task.metric"] == "task.type classification reports 'accuracy', 'f1' or 'matthews'"
    assert problems["task.answer_pattern"] == "only used when task.type is causal_lm"
    assert "random weights" in problems["model"]


def test_existing_relative_dataset_path_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "records.json").write_text("[]")
    monkeypatch.chdir(tmp_path)
    spec = spec_from_dict({**CAUSAL, "task": {"type": "causal_lm", "dataset": "records.json"}})
    assert spec.task.dataset == str(tmp_path / "records.json")
    assert spec_from_dict(CAUSAL).task.dataset == "data/commonsense.json"  # not there: left as written


# --- several sources, labelled tables as instruction records, the test split -----------------


def _sentiment_tsv(path: Path, n: int = 30) -> Path:
    rows = ["sentence\tlabel"] + [f"review number {i} \t{i % 2}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_labelled_table_becomes_instruction_records(tmp_path):
    source = {"path": str(_sentiment_tsv(tmp_path / "sst.tsv")), "name": "sst", "label_names": ["negative", "positive"],
              "instruction": "Review: {sentence}\n\nAnswer format: positive/negative",
              "output": "the correct answer is {answer}"}
    splits = load_instruction_splits({"dataset": [source], "test_fraction": 0.2}, seed=0)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (22, 2, 6)
    record = splits["train"][0]
    number = int(record["instruction"].split("number ")[1].split("\n")[0])
    expected = ["negative", "positive"][number % 2]
    assert record == {"instruction": f"Review: review number {number}\n\nAnswer format: positive/negative",
                      "input": "", "output": f"the correct answer is {expected}", "answer": expected, "choices": "",
                      "source": "sst"}


def test_sources_are_limited_and_split_one_by_one(tmp_path):
    boolq = tmp_path / "boolq.train.json"
    boolq.write_text(json.dumps([{"instruction": f"q{i}", "output": "true", "answer": "true"} for i in range(40)]))
    table = {"path": str(_sentiment_tsv(tmp_path / "sst.tsv", 60)), "instruction": "{sentence}", "label_names": ["no", "yes"]}
    task = {"dataset": [str(boolq), table], "test_fraction": 0.25, "max_train_examples": 10, "max_test_examples": 5}
    splits = load_instruction_splits(task, seed=0)
    for name, per_source in (("train", 10), ("test", 5)):
        assert sorted(splits[name]["source"]) == ["boolq"] * per_source + ["sst"] * per_source
    assert sorted(set(splits["validation"]["source"])) == ["boolq", "sst"]
    table.update(max_train_examples=20, max_eval_examples=2)  # a source's own limits win
    splits = load_instruction_splits(task, seed=0)
    assert sorted(splits["train"]["source"]) == ["boolq"] * 10 + ["sst"] * 20
    assert list(splits["validation"]["source"]).count("sst") == 2


def test_template_errors_name_the_columns(tmp_path):
    table = {"path": str(_sentiment_tsv(tmp_path / "sst.tsv")), "instruction": "{text}"}
    with pytest.raises(ValueError, match=r"template field 'text' is not a column; columns: \['sentence', 'label'\]"):
        load_instruction_splits({"dataset": [table]}, seed=0)
    table = {"path": str(tmp_path / "sst.tsv"), "instruction": "{sentence}", "label_names": ["only-one"]}
    with pytest.raises(ValueError, match="label 1 has no entry in label_names"):
        load_instruction_splits({"dataset": [table]}, seed=0)


def test_source_lists_are_checked_in_the_spec(tmp_path):
    problems = _problems({**CAUSAL, "task": {"type": "causal_lm", "dataset": ["builtin:demo", {"path": "a/x.json"},
                                                                              {"path": "b/x.json"}]}})
    assert "needs instruction records" in problems["task.dataset[0]"]
    assert "two sources share a name" in problems["task.dataset"]
    problems = _problems({"task": {"dataset": ["a.csv"]}, "search": {"space": {"rank": {"choice": [4]}}}})
    assert "a list of sources is for task.type causal_lm" in problems["task.dataset"]
    problems = _problems({**CAUSAL, "task": {"type": "causal_lm", "dataset": [{"file": "a.json"}]}})
    assert any(path.startswith("task.dataset") for path in problems)


def test_classification_test_split_is_held_out_before_validation(tmp_path):
    from trainables.data import load_splits

    table = _sentiment_tsv(tmp_path / "sst.tsv", 100)
    first = load_splits({"dataset": str(table), "test_fraction": 0.2, "test_seed": 1}, seed=0)
    other = load_splits({"dataset": str(table), "test_fraction": 0.2, "test_seed": 1}, seed=5)
    assert len(first["test"]) == 20 and list(first["test"]["sentence"]) == list(other["test"]["sentence"])
    seen = {*other["train"]["sentence"], *other["validation"]["sentence"]}
    assert not seen & set(first["test"]["sentence"]) and len(seen) == 80


def test_generation_stops_a_row_once_its_answer_is_complete(tokenizer):
    from trainables.answers import BUILTIN_PATTERNS
    from trainables.answers import AnswerComplete

    prompt = tokenizer("question: is it?")["input_ids"]
    rows = ["the correct answer is true .", "the correct answer is tr", "no idea yet", "answer3 because",
            "the correct answer is true"]  # the last: "true" may still grow into "trueish"
    encoded = [prompt + tokenizer(text, add_special_tokens=False)["input_ids"] for text in rows]
    width = max(map(len, encoded))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in encoded])
    done = AnswerComplete(BUILTIN_PATTERNS["commonsense"], tokenizer, len(prompt))(ids)
    assert done.tolist() == [True, False, False, True, False]
    assert not AnswerComplete(BUILTIN_PATTERNS["number"], tokenizer, len(prompt))(ids).any()  # the last number counts
