"""evaluate.settings: resolving the settings, and the evaluate options generated from them."""

from __future__ import annotations

import pytest


def test_settings_resolve_and_the_generated_options():
    """One declaration per setting: the CLI's options carry each field's flags, default and help."""
    import click

    from tnedit.cli.evaluate import evaluate_command as evaluate
    from tnedit.errors import InputError
    from tnedit.evaluate.settings import EvaluateSettings, GenerationSettings
    from tnedit.settings import setting_fields

    s = EvaluateSettings("m", [" ja ", "ja", "ko", ""], neurons="n").resolve()
    assert (s.languages, s.op, s.positions, s.control) == (["ja", "ko"], "zero", "all", None)
    assert EvaluateSettings("m", ["ja"], neurons="n", control="random").resolve().control == "random"
    assert s.generation == GenerationSettings(s.n_gen, s.n_langid, s.max_new_tokens, s.qa_max_new_tokens,
                                              s.gen_batch_size)
    assert list(s.to_dict())[:4] == ["original", "languages", "edited", "neurons"]
    with pytest.raises(InputError, match="apply to --neurons hooks"):
        EvaluateSettings("m", ["ja"], edited="e", top_k=3).check_baked_options()
    EvaluateSettings("m", ["ja"], edited="e", positions="all").check_baked_options()
    with pytest.raises(InputError, match="--positions applies to hook edits"):
        EvaluateSettings("m", ["ja"], edited="e", positions="last").resolve()
    options = {p.name: p for p in evaluate.params if isinstance(p, click.Option)}
    fields = [f for f in setting_fields(EvaluateSettings) if f.info.cli]
    for f in fields:
        option = options[f.name]
        assert option.help == f.info.help and option.opts[-1] == f.flags[-1], f.name
        assert option.multiple if f.info.multiple else option.default == f.default, f.name
    assert set(options) - {f.name for f in fields} == {"out", "overwrite", "card_dir", "quiet", "as_json"}
    assert options["languages"].required and options["out"].required
