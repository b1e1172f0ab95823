"""The settings of ``tnedit evaluate``: each field declared once, with its CLI spelling, default and help.

``tnedit.cli.evaluate`` generates its options from :class:`EvaluateSettings` and recipes nest it.
:meth:`EvaluateSettings.resolve` is the one validation (the messages the CLI prints) and returns the
normalised copy the evaluation runs with. Torch-free: the CLI imports this module to build ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import click

from tnedit.edit.settings import NO_CACHE_HELP
from tnedit.edit.spec import Op, Positions
from tnedit.errors import InputError
from tnedit.formats.neurons import NeuronSet
from tnedit.settings import setting

Control = Literal["random", "none"]
Detector = Literal["auto", "lingua", "heuristic"]

SHARED_LANGUAGE = "en"
HOOK_ONLY = "--op, --factor, --top-k, --layers and --positions apply to --neurons hooks, not to a baked EDITED_DIR"
AT_LEAST_ONE = ("batch_size", "gen_batch_size", "knn_k", "kl_top_k", "pca_layers", "lm_eval_batch_size",
                "lm_eval_limit")
NOT_NEGATIVE = ("skip", "n_qa", "n_gen", "n_langid", "qa_shots", "max_new_tokens", "qa_max_new_tokens",
                "lm_eval_fewshot")


@dataclass(frozen=True)
class GenerationSettings:
    """What greedy continuations and QA need (:func:`tnedit.evaluate.generation.run_generation`).

    Built by :attr:`EvaluateSettings.generation`, whose fields declare the defaults and help: none here.
    """

    n_gen: int
    n_langid: int
    max_new_tokens: int
    qa_max_new_tokens: int
    gen_batch_size: int
    langid: Detector = "auto"


@dataclass
class EvaluateSettings:
    """Everything one evaluation needs. ``edited`` (a baked directory) or ``neurons`` (a hook) is required.

    ``op`` None means zero and ``positions`` None means all (so the CLI can tell a given hook option from
    its default); ``control`` None or "none" means no control. :meth:`resolve` fills these in.
    """

    original: str = setting("", cli=False, recipe=False, help="The original model: a local directory or a Hub id.")
    languages: list[str] = setting(
        default_factory=list, flags=("--lang",), multiple=True, required=True,
        help="Target language(s) compared with English; repeat or comma-separate (ja or ja,ko).")
    edited: str | None = setting(None, cli=False, recipe=False, help="A baked checkpoint directory (EDITED_DIR).")
    neurons: str | NeuronSet | None = setting(
        None, metavar="FILE|LIST", recipe=False,
        help="Edit the original at run time with this neuron set instead of a baked EDITED dir: a neurons "
             "file or an inline list such as 3:17,3:99 (LAYER:INDEX[:FACTOR]).")
    op: Op | None = setting(None, help="Hook edit operation (default zero).  [hook only]")
    factor: float | None = setting(None, help="Scale factor for --op scale.  [hook only]")
    positions: Positions | None = setting(
        None, help="Hook positions: all = the baked edit; last / prompt = the paper's deactivation. [default: all]")
    top_k: int | None = setting(None, help="Use only the first K neurons within --layers (the set's order).  "
                                           "[hook only]")
    layers: str | list[int] | None = setting(
        None, help="Use only neurons in these layers (before --top-k): 0-11, 0,3,5-7 or 0.0:0.5.  [hook only]")
    control: Control | None = setting(
        "none", show_default=True,
        help="Add a random-neuron control: same count, same candidate layers, excluding the set.")
    seed: int = setting(42, show_default=True, help="Seed of the control and of the non-parallel shuffle.")
    data: str | None = setting(None, help="Parallel sentences (TSV/JSONL/...); default: the built-in corpus.")
    skip: int = setting(0, show_default=True, help="Skip the first N rows (e.g. the rows identify used).")
    n_pairs: int = setting(200, show_default=True, help="Parallel pairs to evaluate.")
    qa: str | None = setting(None, click_type=click.Path(dir_okay=False),
                             help="MKQA-style JSONL; default: built-in QA.")
    n_qa: int = setting(50, show_default=True, help="QA questions per language (0 = no QA).")
    qa_shots: int = setting(2, show_default=True, help="Few-shot examples in each QA prompt.")
    qa_max_new_tokens: int = setting(10, show_default=True, help="Tokens per QA answer.")
    n_gen: int = setting(3, show_default=True, help="Generation samples shown per language.")
    n_langid: int = setting(16, show_default=True, help="Continuations per language for the output-language share.")
    max_new_tokens: int = setting(20, show_default=True, help="Tokens per continuation.")
    langid: Detector = setting(
        "auto", show_default=True,
        help="Output-language identifier: lingua (pip install 'tnedit[langid]'), heuristic (script and stop "
             "words), or auto (lingua when installed).")
    lm_eval: list[str] = setting(
        default_factory=list, metavar="TASK[,TASK]", multiple=True,
        help="Run these lm-evaluation-harness tasks (or groups) on every condition (pip install 'tnedit[lmeval]').")
    lm_eval_include: str | None = setting(
        None, metavar="DIR", help="A folder of task YAML files for --lm-eval (the harness's --include_path).")
    lm_eval_limit: int | None = setting(None, metavar="N", help="At most N documents per --lm-eval task.")
    lm_eval_fewshot: int | None = setting(None, metavar="K", help="Few-shot examples per --lm-eval prompt "
                                                                   "[default: each task's own].")
    lm_eval_batch_size: int = setting(1, show_default=True, help="Requests per forward pass of the harness.")
    knn_k: int = setting(10, cli=False, help="k of the mutual k-NN alignment.")
    pca_layers: int = setting(4, cli=False, help="Layers with a PCA plot and a centroid heatmap.")
    kl_top_k: int = setting(1024, show_default=True,
                            help="Baked EDITED only: cache the original's top-K log-probs per token for KL.")
    batch_size: int = setting(32, show_default=True, help="Sentences per forward pass.")
    gen_batch_size: int = setting(64, show_default=True, help="Prompts per generate call.")
    dtype: str = setting("auto", show_default=True, help="auto, float32, bfloat16 or float16.")
    device: str = setting("auto", show_default=True, help="auto, cpu, cuda or mps.")
    revision: str | None = setting(None, recipe=False, help="Hub revision of ORIGINAL.")
    force: bool = setting(False, help="Evaluate even if EDITED is not derived from ORIGINAL.")
    no_cache: bool = setting(False, recipe=False, help=NO_CACHE_HELP)  # for the check of EDITED's weight files
    english: str = setting(SHARED_LANGUAGE, cli=False, help="The shared language every target is compared with.")

    @property
    def generation(self) -> GenerationSettings:
        return GenerationSettings(self.n_gen, self.n_langid, self.max_new_tokens, self.qa_max_new_tokens,
                                  self.gen_batch_size, self.langid)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(self.neurons, NeuronSet):
            out["neurons"] = f"<in-memory NeuronSet sha256:{self.neurons.sha256()}>"
        out["languages"] = list(self.languages)
        out["lm_eval"] = list(self.lm_eval)
        return out

    def check_baked_options(self) -> None:
        """A baked EDITED_DIR takes none of the hook options (the CLI's check, before any other)."""
        hook_only = (self.op is not None or self.factor is not None or self.top_k is not None
                     or self.layers is not None or self.positions not in (None, "all"))
        if self.edited and hook_only:
            raise InputError(HOOK_ONLY)

    def resolve(self) -> EvaluateSettings:
        """Validate and return a normalised copy: languages stripped and unique, defaults of op, positions, control."""
        s = replace(self, languages=list(self.languages))
        langs = list(dict.fromkeys(lang.strip() for lang in s.languages if lang and lang.strip()))
        if not langs:
            raise InputError("--lang: give at least one target language (e.g. --lang ja)")
        if s.english in langs:
            raise InputError(f"--lang: '{s.english}' is the shared language; give the L2 language(s) to compare "
                             "with it")
        s.languages = langs
        if (s.edited is None) == (s.neurons is None):
            raise InputError("give either EDITED_DIR (a baked checkpoint) or --neurons FILE (a runtime hook), "
                             "exactly one")
        if s.op is None:
            s.op = "zero"
        if s.positions is None:
            s.positions = "all"
        if s.positions not in ("all", "last", "prompt"):
            raise InputError(f"--positions must be all, last or prompt, got {s.positions!r}")
        if s.edited is not None and s.positions != "all":
            raise InputError("--positions applies to hook edits (--neurons); a baked checkpoint edits every position")
        if s.control in ("none", ""):
            s.control = None
        if s.control not in (None, "random"):
            raise InputError(f"--control must be 'random' or 'none', got {s.control!r}")
        s._check_counts()
        s._check_harness_options()
        return s

    def _check_harness_options(self) -> None:
        """The --lm-eval options, without the harness itself (that check needs it installed)."""
        self.lm_eval = list(dict.fromkeys(name.strip() for value in self.lm_eval for name in str(value).split(",")
                                          if name.strip()))
        if not self.lm_eval:
            given = [flag for flag, value in (("--lm-eval-include", self.lm_eval_include),
                                              ("--lm-eval-limit", self.lm_eval_limit),
                                              ("--lm-eval-fewshot", self.lm_eval_fewshot)) if value is not None]
            if given:
                raise InputError(f"{given[0]} needs --lm-eval TASK")
            return
        if self.positions == "last":
            raise InputError("--lm-eval: --positions last edits one token per sentence (the representation "
                             "analyses); a benchmark runs with --positions all or prompt")

    def _check_counts(self) -> None:
        """The counts' bounds; an optional count left unset (None) means the default and passes."""
        for name in AT_LEAST_ONE:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in NOT_NEGATIVE:
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.n_pairs < 2:
            raise InputError("--n-pairs must be at least 2 (non-parallel pairs need a shuffle)")
