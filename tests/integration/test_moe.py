"""Mixture-of-experts models, in memory: expert neurons read, scored, counted and edited as the method defines them.

Every check is against an independent computation on a tiny random model of each registry MoE type: the
vectorised scores against a brute force that zeroes one neuron's write vector at a time and reads the MoE
block's output (so the router weight is in it by construction), LAPE against a hand count on a fixed
routing, the runtime hook against editing the 3-D expert parameters directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.support.tiny_moe import DENSE_FIRST, EXPERT_WIDTH, EXPERTS, MOE_TYPES, SHARED_WIDTH, make_tiny_moe
from tnedit.architectures import decoder_layers, get_architecture, neuron_space
from tnedit.edit.runtime import RuntimeEdit, apply_to_model
from tnedit.edit.spec import make_edit_spec
from tnedit.formats.neurons import Neuron
from tnedit.identify.lape import activation_probabilities
from tnedit.identify.passes import score_neurons
from tnedit.model.hooks import HookSet

SENTENCES = ["The cat sits on the mat.", "猫がマットの上に座っている。", "We will leave tomorrow.", "De kat zit."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    return {t: make_tiny_moe(t, root) for t in MOE_TYPES}


def _loaded(path):
    from tnedit.model.loading import load_model

    return load_model(str(path), dtype="float32", device="cpu")


def _edited_neurons(model_type: str) -> list[Neuron]:
    """Neurons of two routed experts in two layers, the shared expert and a dense layer where the type has them."""
    neurons = [Neuron(2, 3, expert=1), Neuron(2, 5, expert=0), Neuron(1, 7, expert=3), Neuron(1, 0, expert=1)]
    if model_type in SHARED_WIDTH:
        neurons.append(Neuron(1, 2, expert="shared"))
    if model_type in DENSE_FIRST:
        neurons.append(Neuron(0, 4))
    return neurons


def _edit_by_hand(model, model_type: str, neurons: list[Neuron], factor: float) -> None:
    """The same edit written straight into the module tree, without tnedit."""
    arch = get_architecture(model_type)
    layers = decoder_layers(model, arch)
    with torch.no_grad():
        for n in neurons:
            mlp = layers[n.layer].mlp
            if n.expert is None:
                mlp.down_proj.weight[:, n.index] *= factor
            elif n.expert == "shared":
                shared = mlp.shared_expert if hasattr(mlp, "shared_expert") else mlp.shared_experts
                shared.down_proj.weight[:, n.index] *= factor
            elif model_type == "gpt_oss":
                mlp.experts.down_proj[n.expert, n.index, :] *= factor
            else:
                mlp.experts.down_proj[n.expert, :, n.index] *= factor


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_the_neuron_space_follows_the_config(models, model_type):
    config = json.loads((models[model_type] / "config.json").read_text())
    space = neuron_space(config, get_architecture(model_type))
    moe_width = EXPERTS * EXPERT_WIDTH + SHARED_WIDTH.get(model_type, 0)
    dense_first = model_type in DENSE_FIRST
    assert [space.layer_width(layer) for layer in range(3)] == [48 if dense_first else moe_width] + [moe_width] * 2
    assert space.width == moe_width
    assert space.neuron(1, 2 * EXPERT_WIDTH + 5) == Neuron(1, 5, expert=2)
    if model_type in SHARED_WIDTH:
        assert space.neuron(2, EXPERTS * EXPERT_WIDTH + 1) == Neuron(2, 1, expert="shared")


@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_runtime_hook_equals_the_in_memory_edit_at_every_position(models, model_type):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models[model_type]).eval()
    ids = torch.randint(4, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    original = _logits(model, ids)
    neurons = _edited_neurons(model_type)
    spec = make_edit_spec(neurons, "scale", 0.25)
    with RuntimeEdit(model, spec, "all"):
        hooked = _logits(model, ids)
    handle = apply_to_model(model, spec)
    in_memory = _logits(model, ids)
    handle.restore()
    assert torch.equal(_logits(model, ids), original)  # restore puts every byte back
    by_hand = AutoModelForCausalLM.from_pretrained(models[model_type]).eval()
    _edit_by_hand(by_hand, model_type, neurons, 0.25)
    expected = _logits(by_hand, ids)
    assert (expected - original).abs().max() > 1e-4  # the edit changes the model
    torch.testing.assert_close(in_memory, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(hooked, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_runtime_hook_at_the_last_token_edits_that_position_only(models, model_type):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models[model_type]).eval()
    ids = torch.randint(4, 300, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding: row 1's last real token is at 4
    with torch.no_grad():
        original = model(input_ids=ids, attention_mask=mask).logits
    spec = make_edit_spec(_edited_neurons(model_type), "zero")
    with RuntimeEdit(model, spec, "last") as edit:
        edit.set_attention_mask(mask)
        with torch.no_grad():
            last = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(last[0, :-1], original[0, :-1], atol=1e-6, rtol=0)
    torch.testing.assert_close(last[1, :4], original[1, :4], atol=1e-6, rtol=0)
    assert (last[0, -1] - original[0, -1]).abs().max() > 1e-5
    assert (last[1, 4] - original[1, 4]).abs().max() > 1e-5


def _brute_force_scores(model, model_type, batch, centroid: torch.Tensor, layer: int, space) -> np.ndarray:
    """mean_s[cos(R + c_i, C) − cos(R, C)], where c_i is read off the MoE block's float32 output at the last token with
    neuron i's write vector zeroed: whatever the router weighs its expert by is inside c_i."""
    layer_module = decoder_layers(model, get_architecture(model_type))[layer]
    last = batch.attention_mask.sum(1) - 1
    reads: dict[str, torch.Tensor] = {}
    rows = torch.arange(len(last))

    def residual(_module, args):
        reads["r"] = args[0][rows, last].double()

    def block_output(_module, _args, out):
        reads["out"] = (out[0] if isinstance(out, tuple) else out)[rows, last].double()

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        with HookSet() as hooks, torch.no_grad():
            hooks.add_pre(layer_module.post_attention_layernorm, residual)
            hooks.add_post(layer_module.mlp, block_output)
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return reads["r"], reads["out"]

    r, full = run()
    c = centroid.double()
    before = (r @ c) / (r.norm(dim=1) * c.norm())
    scores = np.full(space.width, np.nan)
    for column in range(space.layer_width(layer)):
        neuron = space.neuron(layer, column)
        saved = [p.detach().clone() for p in model.parameters()]
        _edit_by_hand(model, model_type, [neuron], 0.0)
        _, without = run()
        with torch.no_grad():
            for p, s in zip(model.parameters(), saved, strict=True):
                p.copy_(s)
        moved = r + (full - without)  # R + c_i
        after = (moved @ c) / (moved.norm(dim=1) * c.norm())
        scores[column] = float((after - before).mean())
    return scores


@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_vectorised_scores_equal_a_brute_force_through_the_router(models, model_type):
    from tnedit.model.batching import encode_batches, encode_texts

    lm = _loaded(models[model_type])
    space = lm.neuron_space
    generator = torch.Generator().manual_seed(3)
    centroids = {t: torch.randn(lm.num_layers, lm.hidden_size, generator=generator).double().numpy() for t in (1, 2)}
    scores = score_neurons(lm, SENTENCES, centroids, batch_size=4)
    batch = next(encode_batches(lm.tokenizer, encode_texts(lm.tokenizer, SENTENCES, 64), 4, lm.device))
    for layer in range(lm.num_layers):
        for t in (1, 2):
            expected = _brute_force_scores(lm.model, model_type, batch, torch.as_tensor(centroids[t][layer]), layer,
                                           space)
            np.testing.assert_allclose(scores[t][layer], expected, atol=5e-8, rtol=1e-5, equal_nan=True)
        assert np.isnan(scores[1][layer, space.layer_width(layer):]).all()  # padding holds no neuron
        assert np.count_nonzero(scores[1][layer, : space.layer_width(layer)]) >= EXPERT_WIDTH  # routed ones move R


def _fixed_routing(experts: int):
    """Replaces each router's choice: token t goes to expert t mod E and to expert 0 (1 when the first is 0), weights
    0.7 and 0.3."""

    def hook(_module, _args, out):
        logits, weights, index = out
        tokens = index.shape[0]
        first = torch.arange(tokens) % experts
        second = (first == 0).long()  # expert 0, or 1 where the first choice is 0: experts see unequal shares
        index = torch.stack([first, second], dim=1).to(index.device)
        weights = torch.tensor([0.7, 0.3], dtype=weights.dtype).expand(tokens, 2).contiguous()
        return logits, weights, index

    return hook


def _hand_count(model, model_type, batch, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(active, routed) token counts of every routed-expert neuron of ``layer``, from the experts' own inputs."""
    experts_module = decoder_layers(model, get_architecture(model_type))[layer].mlp.experts
    seen: dict[str, torch.Tensor] = {}

    def record(_module, args):
        seen["x"], seen["index"] = args[0], args[1]

    with HookSet() as hooks, torch.no_grad():
        hooks.add_pre(experts_module, record)
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    valid = batch.attention_mask.reshape(-1).bool()
    active = np.zeros((EXPERTS, EXPERT_WIDTH))
    routed = np.zeros(EXPERTS)
    with torch.no_grad():
        for token in torch.nonzero(valid).flatten().tolist():
            for expert in seen["index"][token].tolist():
                gate, up = torch.nn.functional.linear(seen["x"][token], experts_module.gate_up_proj[expert]).chunk(2)
                a = experts_module.act_fn(gate) * up
                active[expert] += (a > 0).numpy()
                routed[expert] += 1
    return active, routed


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe"])
def test_lape_probabilities_are_shares_of_the_tokens_routed_to_each_expert(models, model_type):
    from tnedit.model.batching import encode_batches, encode_texts

    lm = _loaded(models[model_type])
    space = lm.neuron_space
    texts = {"en": SENTENCES[::2], "ja": SENTENCES[1::2]}
    with HookSet() as routing:
        for layer in range(lm.num_layers):
            if space.is_moe_layer(layer):
                routing.add_post(lm.layers[layer].mlp.gate, _fixed_routing(EXPERTS))
        counts = activation_probabilities(lm, texts, batch_size=8, exclude_special=False)
        for j, rows in enumerate(texts.values()):
            batch = next(encode_batches(lm.tokenizer, encode_texts(lm.tokenizer, rows, 64), 8, lm.device))
            for layer in range(1, lm.num_layers):
                active, routed = _hand_count(lm.model, model_type, batch, layer)
                assert routed.min() > 0 and len(set(routed)) > 1  # the fixed routing reaches experts unevenly
                expected = (active / routed[:, None]).ravel()
                got = counts.probs[layer, : EXPERTS * EXPERT_WIDTH, j]
                np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("model_type", ["qwen2_moe", "gpt_oss"])
def test_runtime_hook_on_the_prompt_edits_every_real_token(models, model_type):
    """With right padding, editing the prompt's tokens gives the real tokens what editing every position gives."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models[model_type]).eval()
    ids = torch.randint(4, 300, (2, 7), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    spec = make_edit_spec(_edited_neurons(model_type), "scale", 3.0)
    outputs = {}
    for positions in ("all", "prompt"):
        with RuntimeEdit(model, spec, positions) as edit, torch.no_grad():
            edit.set_attention_mask(mask)
            outputs[positions] = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(outputs["prompt"][real], outputs["all"][real], atol=1e-6, rtol=0)
    assert (outputs["prompt"][~real] - outputs["all"][~real]).abs().max() > 1e-5  # padding left unedited
