"""The exported adapter is plain PEFT: a fresh Python process that never imports raysearch or
trainables loads every variant's export onto the saved base and gives the trained model's logits.

The contract suite's round trip (test_adapters_contract.py) reloads in the process that trained,
where raysearch's modules, PEFT's registries and any monkeypatching are already in place; this
test leaves all of that behind. One subprocess for every variant keeps it to a few seconds."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_adapters_contract import attached
from tiny_bert import batch, load_base, logits, train_steps

from trainables.adapters import ADAPTERS

# Some ranks pruned, so the export drops ranks and writes a rank_pattern (the contract's config prunes none).
OVERRIDES = {"sora": {"sora_lambda": 1.0, "sora_gate_lr": 0.1, "sora_gate_init": "normal"}}

# Run as `python -I -c`: no PYTHONPATH, no current directory on sys.path. Plain transformers + peft.
LOAD_AND_RUN = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

base_dir, cases_file = sys.argv[1], sys.argv[2]
cases = json.loads(open(cases_file).read())
out = {}
for name, case in cases.items():
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, case["adapter"]).eval()
    with torch.no_grad():
        out[name] = model(**{k: torch.tensor(v) for k, v in case["inputs"].items()}).logits.tolist()
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("trainables", "raysearch"))
assert "trainables" not in sys.modules and "raysearch" not in sys.modules, ours
print(json.dumps({"logits": out, "ours": ours}))
"""


@pytest.mark.subprocess
def test_every_export_reproduces_the_logits_in_a_process_without_raysearch(tiny_bert_dir, tmp_path):
    """Each variant trained 3 steps (at `scaling: 0.75` where it takes `scaling`, so per-module
    alpha matters), exported, and its eval logits on a held-out batch recorded; the subprocess
    loads each export with `PeftModel.from_pretrained` alone and must give the same logits (the
    contract's tolerance), while `trainables` and `raysearch` stay out of its `sys.modules`."""
    inputs = {k: v for k, v in batch(9).items() if k != "labels"}
    cases, expected = {}, {}
    for name in sorted(ADAPTERS):
        options = {**OVERRIDES.get(name, {}), **({"scaling": 0.75} if "scaling" in ADAPTERS[name].hyperparams else {})}
        adapter, model = attached(name, tiny_bert_dir, **options)
        train_steps(adapter, model, 3)
        expected[name] = logits(model, inputs)
        assert not torch.allclose(expected[name], logits(load_base(tiny_bert_dir), inputs), atol=1e-4), name
        adapter.export(model, tmp_path / name)
        cases[name] = {"adapter": str(tmp_path / name), "inputs": {k: v.tolist() for k, v in inputs.items()}}
    sora_ranks = json.loads((tmp_path / "sora" / "adapter_config.json").read_text())["rank_pattern"]
    assert min(sora_ranks.values()) < 4, "SoRA pruned nothing: the export's drop path is not exercised"
    (tmp_path / "cases.json").write_text(json.dumps(cases))

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-I", "-c", LOAD_AND_RUN, str(tiny_bert_dir), str(tmp_path / "cases.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ours"] == []
    assert sorted(result["logits"]) == sorted(ADAPTERS)
    for name, values in result["logits"].items():
        torch.testing.assert_close(torch.tensor(values), expected[name], atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
