"""``tnedit evaluate --lm-eval`` against lm-evaluation-harness itself, on a tiny model and local tasks.

Each condition's numbers must equal what ``lm_eval --model hf --model_args pretrained=DIR`` prints for
the same checkpoint: the original, the baked edit, and the random control baked by ``tnedit apply``. A
hook with ``--positions all`` must give the baked checkpoint's numbers; ``--positions prompt`` must
generate exactly what a plain ``generate`` gives with the edit on the prompt's forward pass only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lm_eval")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

TASKS = ("tiny_choice", "tiny_rolling", "tiny_generate")
DOCUMENTS = [
    {"question": "The cat sits on the", "choices": ["mat.", "tea.", "station."], "answer": 0},
    {"question": "I like green", "choices": ["tea and fresh bread.", "mat", "house"], "answer": 0},
    {"question": "Where is the station?", "choices": ["It is over there.", "bread.", "cat"], "answer": 0},
    {"question": "We will leave the", "choices": ["house tomorrow morning.", "tea", "mat"], "answer": 0},
    {"question": "You must", "choices": ["study hard.", "green", "cat"], "answer": 0},
    {"question": "De kat zit op", "choices": ["de mat.", "tea", "huis"], "answer": 0},
]
SMALL = dict(languages=["ja"], n_pairs=4, n_qa=0, n_gen=1, n_langid=1, max_new_tokens=2, batch_size=4, knn_k=2,
             pca_layers=2, dtype="float32", device="cpu")


def _write_tasks(folder: Path) -> Path:
    """Three local tasks, one of each request kind: loglikelihood, loglikelihood_rolling, generate_until."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "documents.json"
    data.write_text(json.dumps(DOCUMENTS), encoding="utf-8")
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
              "metadata": {"version": 1.0}}
    tasks = {
        "tiny_choice": {"output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
                        "doc_to_target": "answer", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]},
        "tiny_rolling": {"output_type": "loglikelihood_rolling", "doc_to_text": "",
                         "doc_to_target": "{{question}} {{choices[answer]}}",
                         "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"},
                                         {"metric": "bits_per_byte"}]},
        "tiny_generate": {"output_type": "generate_until", "doc_to_text": "{{question}}",
                          "doc_to_target": "{{choices[answer]}}",
                          "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
                          "metric_list": [{"metric": "exact_match"}]},
    }
    for name, config in tasks.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **common, **config}), encoding="utf-8")
    return folder


def _neurons():
    from tnedit.formats.neurons import Method, Neuron, NeuronSet

    # enough of a 64-wide MLP that every kind of number moves
    picks = [(layer, index) for layer in (0, 1, 2) for index in range(0, 64, 2)]
    return NeuronSet([Neuron(layer, index, score=1.0) for layer, index in picks],
                     method=Method(kind="manual", layers=[0, 1, 2]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.support.tiny import make_tiny
    from tnedit.edit import apply_to_checkpoint, make_edit_spec
    from tnedit.reporting import NullReporter

    root = tmp_path_factory.mktemp("lm_eval")
    model = make_tiny("llama", root)
    neurons = root / "neurons.json"
    _neurons().save(neurons)
    edited = root / "edited"
    apply_to_checkpoint(str(model), make_edit_spec(_neurons(), "zero"), edited, neuron_set=_neurons(),
                        neuron_source=str(neurons), reporter=NullReporter())
    return root, model, neurons, edited, _write_tasks(root / "tasks")


def _harness_cli(model: Path, tasks: Path, out: Path) -> dict:
    """What ``lm_eval --model hf --model_args pretrained=DIR`` reports, per task and metric."""
    from tnedit.evaluate.harness import condition_results

    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model}",
                    "--device", "cpu", "--tasks", ",".join(TASKS), "--include_path", str(tasks), "--output_path",
                    str(out)], check=True, capture_output=True)
    (written,) = out.rglob("results_*.json")
    return condition_results(json.loads(written.read_text(encoding="utf-8")), TASKS)


def _evaluate(model: Path, tasks: Path, out: Path, **settings) -> dict:
    """The evaluation's report.json, written by the library as ``tnedit evaluate`` writes it."""
    from tnedit.evaluate import EvaluateSettings, run_evaluation, write_report
    from tnedit.reporting import NullReporter

    full = EvaluateSettings(original=str(model), lm_eval=[",".join(TASKS)], lm_eval_include=str(tasks),
                            **{**SMALL, **settings})
    write_report(run_evaluation(full, reporter=NullReporter()), out)
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def baked_report(setup):
    root, model, _, edited, tasks = setup
    return _evaluate(model, tasks, root / "report-baked", edited=str(edited), control="random")


def test_every_condition_equals_the_harness_cli(setup, baked_report):
    from tnedit.edit import apply_to_checkpoint, make_edit_spec
    from tnedit.formats.neurons import Neuron, NeuronSet
    from tnedit.reporting import NullReporter

    root, model, _, edited, tasks = setup
    control = NeuronSet([Neuron(layer, index) for layer, index in baked_report["control"]["neurons"]])
    control_dir = root / "control"
    apply_to_checkpoint(str(model), make_edit_spec(control, "zero"), control_dir, neuron_set=control,
                        reporter=NullReporter())
    for condition, checkpoint in (("original", model), ("edited", edited), ("control", control_dir)):
        assert baked_report["lm_eval"][condition] == _harness_cli(checkpoint, tasks, root / f"cli-{condition}")
    original, edit = baked_report["lm_eval"]["original"], baked_report["lm_eval"]["edited"]
    assert original["tiny_rolling"]["word_perplexity"] != edit["tiny_rolling"]["word_perplexity"]


def test_the_report_records_the_harness(setup, baked_report):
    import lm_eval

    from tnedit.evaluate.report import card_markdown

    setup_block = baked_report["lm_eval_setup"]
    assert setup_block["version"] == lm_eval.__version__
    assert set(setup_block["tasks"]) == set(TASKS)
    assert all(facts["n_documents"] == len(DOCUMENTS) for facts in setup_block["tasks"].values())
    markdown = (setup[0] / "report-baked" / "report.md").read_text(encoding="utf-8")
    assert "### lm-evaluation-harness" in markdown
    assert "| tiny_rolling | word_perplexity |" in markdown
    card = card_markdown(baked_report)
    assert "### lm-evaluation-harness" in card and "Δ edited" in card


def test_a_hook_on_every_position_equals_the_baked_checkpoint(setup, baked_report):
    root, model, neurons, _, tasks = setup
    hooked = _evaluate(model, tasks, root / "report-hook", neurons=str(neurons))
    assert hooked["lm_eval"]["edited"] == baked_report["lm_eval"]["edited"]
    assert hooked["lm_eval"]["original"] == baked_report["lm_eval"]["original"]


def _plain_generate(model_dir: Path, prompts: list[str], edit_prefill: bool) -> list[str]:
    """Greedy continuations, one prompt at a time, the neurons zeroed in the prompt's forward pass only.

    Written with plain torch hooks, not tnedit's: the prefill is the one forward longer than one token.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    by_layer: dict[int, list[int]] = {}
    for neuron in _neurons().neurons:
        by_layer.setdefault(neuron.layer, []).append(neuron.index)

    def zero(indices):
        def hook(_module, args):
            if args[0].shape[1] == 1:
                return None
            x = args[0].clone()
            x[..., indices] = 0
            return (x,)
        return hook

    handles = [model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(zero(indices))
               for layer, indices in by_layer.items()] if edit_prefill else []
    out = []
    try:
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])  # the tokenizer's defaults, as generate_until
            with torch.inference_mode():
                generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                           do_sample=False, pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0])
    finally:
        for handle in handles:
            handle.remove()
    return out


def _harness_generations(model_dir: Path, tasks: Path, positions: str | None) -> tuple[list[str], list[str]]:
    """(prompts, continuations) of ``tiny_generate`` under the edit at ``positions`` (None: no edit)."""
    from lm_eval import simple_evaluate

    from tnedit.edit import make_edit_spec
    from tnedit.evaluate.harness import _edited_model_class, _task_manager
    from tnedit.evaluate.passes import Condition
    from tnedit.model.loading import load_model

    lm = load_model(str(model_dir), dtype="float32", device="cpu")
    condition = (Condition("original", "original") if positions is None
                 else Condition("edited", "hook", make_edit_spec(_neurons(), "zero"), positions))
    harness_model = _edited_model_class()(lm, condition, 1, True)
    results = simple_evaluate(model=harness_model, tasks=["tiny_generate"], task_manager=_task_manager(str(tasks)),
                              log_samples=True, verbosity="ERROR")
    samples = sorted(results["samples"]["tiny_generate"], key=lambda sample: sample["doc_id"])
    return [s["arguments"][0][0] for s in samples], [s["filtered_resps"][0] for s in samples]


def test_prompt_positions_edit_the_prompt_and_never_a_generated_token(setup):
    root, model, _, _, tasks = setup
    prompts, prompt_only = _harness_generations(model, tasks, "prompt")
    _, every_position = _harness_generations(model, tasks, "all")
    _, unedited = _harness_generations(model, tasks, None)
    assert prompt_only == _plain_generate(model, prompts, edit_prefill=True)
    assert unedited == _plain_generate(model, prompts, edit_prefill=False)
    assert prompt_only != unedited  # the edit is strong enough to be seen
    assert prompt_only != every_position  # and generated tokens were left alone


def test_prompt_positions_score_loglikelihood_as_every_position(setup, baked_report):
    root, model, neurons, _, tasks = setup
    prompt = _evaluate(model, tasks, root / "report-prompt", neurons=str(neurons), positions="prompt")
    for task in ("tiny_choice", "tiny_rolling"):
        assert prompt["lm_eval"]["edited"][task] == baked_report["lm_eval"]["edited"][task]
    assert prompt["lm_eval_setup"]["positions"] == "prompt"
