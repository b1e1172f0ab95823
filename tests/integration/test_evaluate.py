"""tnedit evaluate on a tiny model: the runner (hook and baked edits, controls), reports, the card, errors.

The metrics against hand computations, QA scoring, language ID, the settings and the overlap warning are
under ``tests/unit/evaluate/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.hostile import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --- the runner on tiny models -------------------------------------------------------------------


LANGS = ["ja", "ko"]
SMALL = dict(n_pairs=16, n_qa=2, qa_shots=1, n_gen=2, n_langid=3, max_new_tokens=5, qa_max_new_tokens=4,
             batch_size=8, knn_k=3, pca_layers=3)


def _neurons():
    from tnedit.formats.neurons import Method, Neuron, NeuronSet

    picks = [(1, 3), (1, 17), (1, 40), (2, 5), (2, 9), (0, 60), (2, 33), (1, 8)]
    return NeuronSet([Neuron(a, b, score=1.0 - i / 10) for i, (a, b) in enumerate(picks)],
                     method=Method(kind="manual", layers=[0, 1, 2]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.support.tiny import make_tiny

    root = tmp_path_factory.mktemp("evaluate")
    model = make_tiny("llama", root)
    neurons = root / "neurons.json"
    _neurons().save(neurons)
    return root, model, neurons


@pytest.fixture(scope="module")
def baked(tiny):
    from tnedit.edit import apply_to_checkpoint, make_edit_spec
    from tnedit.reporting import NullReporter

    root, model, neurons = tiny
    ns = _neurons()
    out = root / "edited"
    apply_to_checkpoint(str(model), make_edit_spec(ns, "zero"), out, neuron_set=ns, neuron_source=str(neurons),
                        reporter=NullReporter())
    return out


def _settings(model, **kw):
    from tnedit.evaluate import EvaluateSettings

    return EvaluateSettings(original=str(model), **{"languages": list(LANGS), **SMALL, **kw})


@pytest.fixture(scope="module")
def hook_report(tiny):
    from tnedit.evaluate import run_evaluation

    _, model, neurons = tiny
    return run_evaluation(_settings(model, neurons=str(neurons), control="random", kl_top_k=10_000))


def test_factor_one_edit_changes_nothing(tiny):
    from tnedit.evaluate import run_evaluation

    _, model, neurons = tiny
    data = run_evaluation(_settings(model, neurons=str(neurons), op="scale", factor=1.0, n_pairs=12)).data
    orig, edit = data["conditions"]["original"], data["conditions"]["edited"]
    for lang in ["en", *LANGS]:
        assert edit["lm"][lang]["kl"] == 0.0
        assert edit["lm"][lang]["top1"] == 1.0
        assert edit["lm"][lang]["perplexity"] == orig["lm"][lang]["perplexity"]
        assert edit["generations"][lang] == orig["generations"][lang]
    assert edit["representation"] == orig["representation"]
    assert edit["pca"] == orig["pca"] and edit["qa"] == orig["qa"]
    for row in data["headline"]:
        if row["condition"] == "edited":
            assert row["mid_cos_delta"] == 0.0 and row["kl_l2"] == 0.0 and row["kl_en"] == 0.0


def test_hook_report_contents(hook_report):
    data = hook_report.data
    assert list(data["conditions"]) == ["original", "edited", "control"]
    ctl = data["control"]
    edited = {(n.layer, n.index) for n in _neurons().neurons}
    picked = {tuple(x) for x in ctl["neurons"]}
    assert len(picked) == len(edited) and not picked & edited
    assert {a for a, _ in picked} <= {0, 1, 2} and ctl["seed"] == 42
    assert data["edit"]["source"] == "hook" and data["edit"]["n_neurons"] == 8
    assert data["edit"]["neuron_set_sha256"] == _neurons().sha256()
    assert data["data"]["rows"] == [0, 16] and len(data["data"]["sha256"]) == 64
    assert data["mid_layers"] == [1] and data["layers"] == [0, 1, 2, 3]
    for name in ("edited", "control"):
        assert data["conditions"][name]["kl_method"] == "exact"
        assert data["conditions"][name]["lm"]["ja"]["kl"] > 0
    assert len(data["headline"]) == 3 * len(LANGS)
    qa = data["conditions"]["original"]["qa"]["ja"]
    assert qa["n"] == 2 and 0.0 <= qa["f1"] <= 1.0
    from tnedit.formats.report import report_errors

    assert report_errors(data) == []
    assert report_errors(json.loads(hook_report.to_json())) == []


def test_margin_and_selectivity(hook_report):
    """The margin is parallel minus shuffled cosine; a manual set's target is the first L2 and every other
    language evaluated is kept; the line reads the ratios of the per-language perplexities."""
    data = hook_report.data
    mids = data["mid_layers"]
    for row in data["headline"]:
        rep = data["conditions"][row["condition"]]["representation"][row["lang"]]
        gap = [rep["cos_parallel"][i] - rep["cos_nonparallel"][i] for i in mids]
        assert row["mid_margin"] == pytest.approx(sum(gap) / len(gap), abs=1e-12)
    rows = {row["condition"]: row for row in data["selectivity"]}
    assert list(rows) == ["edited", "control"]
    for name, row in rows.items():
        lm, base = data["conditions"][name]["lm"], data["conditions"]["original"]["lm"]
        ratios = {lang: lm[lang]["perplexity"] / base[lang]["perplexity"] for lang in ["en", *LANGS]}
        assert row["target"] == "ja" and row["kept"] == ["en", "ko"]
        assert row["worst_kept_ppl_ratio"] == max(ratios["en"], ratios["ko"])
        assert row["selectivity"] == pytest.approx(ratios["ja"] / row["worst_kept_ppl_ratio"])
        assert row["stays"]["ja"]["original"] == data["conditions"]["original"]["output_language"]["ja"]["share"]
    console = hook_report.console()
    assert "selectivity (edited): ja perplexity" in console and "margin" in console


def test_baked_and_hook_agree(tiny, baked, hook_report):
    from tnedit.evaluate import run_evaluation

    _, model, _ = tiny
    data = run_evaluation(_settings(model, edited=str(baked), control="random", kl_top_k=10_000)).data
    hook = hook_report.data
    assert data["edit"]["source"] == "baked"
    assert data["models"]["edited"]["tokenizer_check"].startswith("tokenizer files")
    assert data["control"]["neurons"] == hook["control"]["neurons"]
    for name in ("original", "edited", "control"):
        a, b = data["conditions"][name], hook["conditions"][name]
        for lang in LANGS:
            for key, values in a["representation"][lang].items():
                assert np.allclose(values, b["representation"][lang][key], atol=1e-5), (name, lang, key)
        for lang in ["en", *LANGS]:
            la, lb = a["lm"][lang], b["lm"][lang]
            assert la["perplexity"] == pytest.approx(lb["perplexity"], rel=1e-5)
            if name != "original":
                assert la["kl"] == pytest.approx(lb["kl"], rel=1e-4, abs=1e-9)
                assert la["top1"] == lb["top1"]
        assert a["generations"] == b["generations"]
    assert data["conditions"]["edited"]["kl_method"] == "exact"  # kl_top_k >= vocab


def test_baked_kl_topk_is_a_lower_bound(tiny, baked, hook_report):
    from tnedit.evaluate import run_evaluation

    _, model, _ = tiny
    data = run_evaluation(_settings(model, edited=str(baked), kl_top_k=8, n_qa=0, n_langid=0, n_gen=0)).data
    edit = data["conditions"]["edited"]
    assert edit["kl_method"] == "top-8+rest"
    for lang in ["en", *LANGS]:
        exact = hook_report.data["conditions"]["edited"]["lm"][lang]
        assert 0 <= edit["lm"][lang]["kl"] <= exact["kl"] * (1 + 1e-6)
        assert edit["lm"][lang]["top1"] == exact["top1"]
    assert "qa" in edit and edit["qa"] == {}


def test_last_position_hook_leaves_perplexity(tiny):
    from tnedit.evaluate import run_evaluation

    _, model, neurons = tiny
    data = run_evaluation(_settings(model, neurons=str(neurons), positions="last", n_qa=0, n_gen=0, n_langid=0)).data
    orig, edit = data["conditions"]["original"], data["conditions"]["edited"]
    for lang in ["en", *LANGS]:
        assert edit["lm"][lang]["perplexity"] == pytest.approx(orig["lm"][lang]["perplexity"], rel=1e-6)
    assert edit["representation"]["ja"]["cos_parallel"] != orig["representation"]["ja"]["cos_parallel"]


def test_layers_filter_equals_a_set_of_those_layers(tiny, tmp_path):
    from tnedit.evaluate import run_evaluation
    from tnedit.formats.neurons import NeuronSet

    _, model, neurons = tiny
    only = _neurons()
    only = NeuronSet([n for n in only.neurons if n.layer == 1], method=only.method)
    only.save(tmp_path / "layer1.json")
    quick = dict(n_qa=0, n_gen=0, n_langid=0, control="random")
    filtered = run_evaluation(_settings(model, neurons=str(neurons), layers="1", **quick)).data
    direct = run_evaluation(_settings(model, neurons=str(tmp_path / "layer1.json"), **quick)).data
    assert filtered["edit"]["n_neurons"] == len(only.neurons)
    assert filtered["edit"]["per_layer"] == {1: len(only.neurons)}
    assert {layer for layer, _ in filtered["control"]["neurons"]} == {1}, "the control must come from the kept layers"
    assert filtered["conditions"]["edited"]["representation"] == direct["conditions"]["edited"]["representation"]
    assert filtered["conditions"]["edited"]["lm"] == direct["conditions"]["edited"]["lm"]


# --- reports --------------------------------------------------------------------------------------


def _png(path: Path) -> bytes:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 5000, path
    return data


def test_write_report_files(hook_report, tmp_path):
    from tnedit.evaluate import write_report
    from tnedit.evaluate.tables import headline_table, render_console, render_markdown

    out = write_report(hook_report, tmp_path / "report")
    assert not list(tmp_path.glob(".report*"))  # no temporary sibling left
    data = json.loads((out / "report.json").read_text())
    assert data["format"] == "tnedit.report/1"
    for name in ("similarity.png", "mutual_knn.png"):
        _png(out / name)
    for kind in ("pca", "centroids"):
        blobs = [_png(out / f"{kind}_{c}.png") for c in ("original", "edited", "control")]
        assert len(set(blobs)) == 3
    md = (out / "report.md").read_text()
    table = headline_table(data)
    console = render_console([table])
    # one table, two renderers: the same cells in both
    for cells in table.cells():
        for cell in cells:
            assert cell in md and cell in console
    assert render_markdown([table]) in md
    assert "![similarity](similarity.png)" in md
    with pytest.raises(Exception, match="already exists"):
        write_report(hook_report, out)
    write_report(hook_report, out, overwrite=True)


def test_validate_report_catches_errors(hook_report):
    from tnedit.formats.report import report_errors

    data = json.loads(hook_report.to_json())
    broken = json.loads(json.dumps(data))
    del broken["settings"]["languages"]
    assert any("languages" in e for e in report_errors(broken))
    broken = json.loads(json.dumps(data))
    broken["format"] = "tnedit.report/0"
    assert report_errors(broken)
    broken = json.loads(json.dumps(data))
    broken["conditions"]["edited"]["representation"]["ja"]["cos_parallel"] = [0.1]
    assert any("cos_parallel" in e for e in report_errors(broken))
    broken = json.loads(json.dumps(data))
    broken["conditions"]["edited"]["lm"]["en"]["n_tokens"] = "7"
    assert any("n_tokens" in e for e in report_errors(broken))
    broken = json.loads(json.dumps(data))
    del broken["headline"][0]["kl_l2"]
    assert any("headline[0]" in e for e in report_errors(broken))
    assert report_errors([]) == ["report: expected a JSON object"]


def test_update_card_replaces_section(hook_report, baked, tmp_path):
    import shutil

    from tnedit.evaluate import update_card

    card_dir = tmp_path / "ckpt"
    shutil.copytree(baked, card_dir)
    before = (card_dir / "README.md").read_text()
    update_card(hook_report, card_dir, report_dir=card_dir / "evaluation")
    once = (card_dir / "README.md").read_text()
    assert "<!-- tnedit:evaluation:start -->" in once and "| condition |" in once
    assert "](evaluation/similarity.png)" in once
    assert once.startswith(before.split("\n")[0])  # front matter kept
    update_card(hook_report, card_dir)
    twice = (card_dir / "README.md").read_text()
    assert twice.count("<!-- tnedit:evaluation:start -->") == 1


def test_report_format_is_typed_and_round_trips(hook_report, tmp_path):
    """tnedit.report/1 read into dataclasses: the checked keys typed, every other key kept, the same dict back."""
    from tnedit.errors import InputError
    from tnedit.formats.report import Report, ReportError, load_report

    data = json.loads(hook_report.to_json())
    report = Report.from_dict(data)
    assert report.format == "tnedit.report/1" and report.settings.languages == LANGS
    assert report.settings.extra["n_qa"] == SMALL["n_qa"] and report.data.rows == [0, 16]
    edited = report.conditions["edited"]
    assert edited.source == "hook" and edited.extra["kl_method"] == "exact"
    assert edited.lm["en"].n_tokens == data["conditions"]["edited"]["lm"]["en"]["n_tokens"]
    assert edited.lm["ja"].extra["kl"] == data["conditions"]["edited"]["lm"]["ja"]["kl"]
    assert edited.representation["ko"].mutual_knn == data["conditions"]["edited"]["representation"]["ko"]["mutual_knn"]
    assert report.to_dict() == data
    path = tmp_path / "report.json"
    path.write_text(hook_report.to_json(), encoding="utf-8")
    assert load_report(path).to_dict() == data
    broken = json.loads(json.dumps(data))
    del broken["runtime"]["total_s"]
    with pytest.raises(ReportError, match=r"report does not validate: runtime.total_s: expected a number") as exc:
        Report.from_dict(broken)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, InputError)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_report(path)
    with pytest.raises(ReportError, match="report does not validate"):
        from tnedit.evaluate import write_report

        write_report(broken, tmp_path / "never")
    assert not (tmp_path / "never").exists()


# --- errors ---------------------------------------------------------------------------------------


def test_error_missing_language(tiny):
    from tnedit.errors import InputError
    from tnedit.evaluate import run_evaluation

    _, model, neurons = tiny
    with pytest.raises(InputError, match="xx"):
        run_evaluation(_settings(model, neurons=str(neurons), languages=["xx"]))
    with pytest.raises(InputError, match="shared language"):
        run_evaluation(_settings(model, neurons=str(neurons), languages=["en"]))
    with pytest.raises(InputError, match="exactly one"):
        run_evaluation(_settings(model))


def test_error_mismatched_tokenizers(tiny, tmp_path):
    from tests.support.tiny import make_tiny
    from tnedit.errors import InputError
    from tnedit.evaluate import check_tokenizers

    _, model, _ = tiny
    assert check_tokenizers(model, model, ["a b"]).startswith("tokenizer files identical")
    other_vocab = make_tiny("llama", tmp_path, vocab_size=400)
    with pytest.raises(InputError, match="vocab"):
        check_tokenizers(model, other_vocab, ["a"])
    no_bos = make_tiny("llama", tmp_path, add_bos=False, subdir="nobos")
    with pytest.raises(InputError, match="split"):
        check_tokenizers(model, no_bos, ["The cat sits on the mat."])


def test_error_not_derived(tiny, baked, tmp_path):
    import shutil

    from tnedit.errors import InputError
    from tnedit.evaluate import run_evaluation

    _, model, _ = tiny
    bad = tmp_path / "edited-elsewhere"
    shutil.copytree(baked, bad)
    prov = json.loads((bad / "tnedit.json").read_text())
    prov["source"]["fingerprint"] = "sha256:0000"
    prov["source"]["name_or_path"] = "someone/other-model"
    (bad / "tnedit.json").write_text(json.dumps(prov))
    with pytest.raises(InputError, match="not derived from ORIGINAL.*fingerprint.*other-model.*--force"):
        run_evaluation(_settings(model, edited=str(bad)))
    (bad / "tnedit.json").unlink()
    with pytest.raises(InputError, match="no tnedit.json"):
        run_evaluation(_settings(model, edited=str(bad)))


def test_cli_errors_are_one_line(tiny, tmp_path, capsys):
    _, model, neurons = tiny
    code, _, err = run_cli(["evaluate", str(model), "--neurons", str(neurons), "--lang", "xx",
                            "-o", str(tmp_path / "r")], capsys)
    assert code == 2
    err = err.strip()
    assert err.startswith("tnedit: error:") and "xx" in err and len(err.splitlines()) == 1
    for flag in (["--positions", "last"], ["--layers", "0-1"]):
        code, _, err = run_cli(["evaluate", str(model), str(model), *flag, "--lang", "ja", "-o", str(tmp_path / "r")],
                               capsys)
        assert code == 2
        assert flag[0] in err and "baked EDITED_DIR" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["evaluate", str(model), "--neurons", str(neurons), "--layers", "9", "--lang", "ja",
                            "-o", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "--layers" in err and "9" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_cli_forced_run_with_card(tiny, baked, tmp_path, capsys):
    import shutil

    _, model, _ = tiny
    edited = tmp_path / "edited-moved"
    shutil.copytree(baked, edited)
    prov = json.loads((edited / "tnedit.json").read_text())
    prov["source"]["name_or_path"] = "somewhere/else"
    (edited / "tnedit.json").write_text(json.dumps(prov))
    out = tmp_path / "rep"
    code, stdout, err = run_cli(["evaluate", str(model), str(edited), "--lang", "ja", "-o", str(out),
                                 "--n-pairs", "12", "--n-qa", "1", "--qa-shots", "1", "--n-gen", "1", "--n-langid", "2",
                                 "--max-new-tokens", "3", "--qa-max-new-tokens", "3", "--force", "--update-card",
                                 str(edited), "--json"], capsys)
    assert code == 0, err
    assert "warning: EDITED_DIR is not derived" in err
    result = json.loads(stdout)
    assert result["out"] == str(out) and (out / "report.json").is_file()
    assert "tnedit:evaluation:start" in (edited / "README.md").read_text()
    assert json.loads((out / "report.json").read_text())["warnings"]


def test_evaluate_after_apply(tiny, baked, tmp_path):
    import shutil

    from tnedit.cli.evaluate import evaluate_after_apply

    _, model, _ = tiny
    edited = tmp_path / "fresh"
    shutil.copytree(baked, edited)
    result = evaluate_after_apply(str(model), edited, "ja", quiet=True, **SMALL)
    assert Path(result["out"]) == edited / "evaluation"
    assert (edited / "evaluation" / "report.json").is_file()
    card = (edited / "README.md").read_text()
    assert "tnedit:evaluation:start" in card and "](evaluation/similarity.png)" in card
    assert {row["condition"] for row in result["headline"]} == {"original", "edited", "control"}
