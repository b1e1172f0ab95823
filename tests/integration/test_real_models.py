"""apply on real small models from `make models`: Gemma-3-270M (gemma3_text) and SmolLM2-135M (llama)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from tests.support.hostile import run_cli
from tests.support.models import real_model_dir
from tests.support.references import hooked_logits, logits_of

pytestmark = pytest.mark.real

PROMPTS = ["The capital of France is", "日本の首都は"]


def _neurons(num_layers: int, width: int) -> list[tuple[int, int]]:
    # Spread over every layer, including index 0 and the last index.
    return [(layer, (layer * 37 + j * 211) % width) for layer in range(num_layers) for j in range(3)] + [
        (0, 0),
        (num_layers - 1, width - 1),
    ]


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
@pytest.mark.parametrize("op,factor", [("zero", 0.0), ("scale", 0.5)])
def test_real_model_edit_equals_hook_and_generates(name, op, factor, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    src = real_model_dir(name)
    config = json.loads((src / "config.json").read_text())
    neurons = _neurons(config["num_hidden_layers"], config["intermediate_size"])
    out = tmp_path / "edited"
    spec = ",".join(f"{a}:{b}" for a, b in neurons)
    args = ["apply", str(src), "--neurons", spec, "--op", op, "-o", str(out), "--quiet"]
    if op == "scale":
        args += ["--factor", str(factor)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    weights = json.loads((out / "tnedit.json").read_text())["weights"]
    for f, entry in weights.items():
        assert hashlib.sha256((out / f).read_bytes()).hexdigest() == entry["sha256"]

    tok = AutoTokenizer.from_pretrained(src)
    original = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    edited = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        expected = hooked_logits(original, neurons, factor, ids)  # float32 models: the hook's float() is exact
        plain = logits_of(original, ids)
        baked = logits_of(edited, ids)
        torch.testing.assert_close(baked, expected, atol=1e-4, rtol=0)
        assert (baked - plain).abs().max() > 1e-3, "the edit changed nothing"
    del original
    gen = pipeline("text-generation", model=str(out), device="cpu", dtype=torch.float32)
    text = gen(PROMPTS[0], max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith(PROMPTS[0]) and len(text) > len(PROMPTS[0])
