"""lm-evaluation-harness on the conditions of an evaluation, with the model already loaded.

The harness's own ``HFLM`` runs on the loaded model, so a number here is the number
``lm_eval --model hf --model_args pretrained=DIR`` gives for the same checkpoint: the same request
building, batching and metrics, only no second load. A hook condition (the edit or the random
control on the original) wraps each of the harness's forward and generate calls in the edit:

- ``--positions all`` edits every position, exactly the baked checkpoint;
- ``--positions prompt`` edits every token the model is given and no generated token, as the paper's
  prompt-only deactivation does. A loglikelihood request generates nothing, so the whole scored input
  (context and continuation) is prompt there and the number equals ``all``'s; a ``generate_until``
  request edits its prompt and leaves the generated tokens alone.

``--positions last`` (one token per sentence, the representation analyses) has no meaning for a
benchmark and is refused. lm-eval is imported only here and only when ``--lm-eval`` is given.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tnedit.errors import InputError
from tnedit.evaluate.passes import Condition, edited
from tnedit.model.loading import LoadedModel
from tnedit.reporting import Reporter

HARNESS_DISTRIBUTION = "lm-eval"
NOT_INSTALLED = "--lm-eval: lm-evaluation-harness is not installed (pip install 'tnedit[lmeval]')"
# Keys of a harness result row that are not metrics.
ROW_FACTS = ("alias", "name", "sample_len", "samples")


@dataclass(frozen=True)
class HarnessPlan:
    """What the harness runs on every condition: task names, where extra task YAML lives, limits."""

    tasks: tuple[str, ...]
    include: str | None
    limit: int | None
    fewshot: int | None
    batch_size: int
    quiet: bool = False
    # The harness's task index, built once by check_harness: building it reads every task YAML (~8 s).
    task_manager: Any = field(default=None, compare=False, repr=False)


def harness_version() -> str:
    return importlib.metadata.version(HARNESS_DISTRIBUTION)


def _task_manager(include: str | None) -> Any:
    from lm_eval.tasks import TaskManager

    with quieter("lm_eval"):
        return TaskManager(include_path=include)


def check_harness(plan: HarnessPlan) -> HarnessPlan:
    """``plan`` with its task index, or a refusal before any model loads: no harness, a missing
    ``--lm-eval-include``, an unknown task."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise InputError(NOT_INSTALLED) from None
    if plan.include is not None and not Path(plan.include).is_dir():
        raise InputError(f"{plan.include}: no such directory (--lm-eval-include must be a folder of task YAML "
                         "files)")
    task_manager = _task_manager(plan.include)
    known = set(task_manager.all_tasks)
    for name in plan.tasks:
        if name not in known:
            where = f"the harness or {plan.include}" if plan.include else "the harness (add --lm-eval-include DIR)"
            raise InputError(f"--lm-eval: unknown task '{name}' (not in {where})")
    return replace(plan, task_manager=task_manager)


def _edited_model_class() -> type:
    """``HFLM`` whose every forward and generate call runs under a condition's edit."""
    import torch
    from lm_eval.models.huggingface import HFLM

    class ConditionLM(HFLM):
        def __init__(self, lm: LoadedModel, condition: Condition, batch_size: int, quiet: bool):
            # the tokenizer by path, as `--model_args pretrained=DIR` loads it: tnedit's own copy pads right.
            # HFLM warns that a loaded model was passed: that is the point here, so the warning is not shown.
            with quieter("lm_eval.models.huggingface"):
                super().__init__(pretrained=lm.model, tokenizer=str(lm.path or lm.name_or_path),
                                 batch_size=batch_size)
            self.loaded, self.condition, self.quiet = lm, condition, quiet

        def _model_call(self, inps: Any, attn_mask: Any = None, labels: Any = None) -> Any:
            with edited(self.loaded, self.condition, torch.ones_like(inps)):
                return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

        def _model_generate(self, context: Any, max_length: int, stop: list[str], **kwargs: Any) -> Any:
            mask = kwargs.get("attention_mask")
            with edited(self.loaded, self.condition, torch.ones_like(context) if mask is None else mask):
                return super()._model_generate(context, max_length, stop, **kwargs)

        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or self.quiet)

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or self.quiet)

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().generate_until(requests, disable_tqdm=disable_tqdm or self.quiet)

        def _loglikelihood_tokens(self, requests: Any, disable_tqdm: bool = False, **kwargs: Any) -> Any:
            # loglikelihood_rolling asks for a bar per window whatever it was given
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm or self.quiet, **kwargs)

    return ConditionLM


@contextmanager
def quieter(name: str, enabled: bool = True) -> Iterator[None]:
    """Only errors from logger ``name`` (and its children) for the ``with`` block."""
    logger = logging.getLogger(name)
    before = logger.level
    if enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def run_harness(lm: LoadedModel, condition: Condition, plan: HarnessPlan, reporter: Reporter) -> dict[str, Any]:
    """The harness's raw results (``simple_evaluate``'s dict, samples left out) for one condition.

    The harness's warnings (about the tasks' YAML, say) are shown unless ``--quiet``.
    """
    from lm_eval import simple_evaluate

    reporter.log(f"evaluate: lm-eval {', '.join(plan.tasks)} ({condition.name})")
    with quieter("lm_eval", enabled=plan.quiet):
        model = _edited_model_class()(lm, condition, plan.batch_size, plan.quiet)
        results = simple_evaluate(model=model, tasks=list(plan.tasks), num_fewshot=plan.fewshot, limit=plan.limit,
                                  task_manager=plan.task_manager or _task_manager(plan.include), log_samples=False)
    if results is None:  # only ranks other than 0 get None; tnedit runs one process
        raise InputError("--lm-eval: the harness returned no results")
    return results


def metrics_of(row: dict[str, Any]) -> dict[str, Any]:
    """A harness result row as ``{metric: value}``: ``acc,none`` → ``acc``, ``acc_stderr,none`` → ``acc_stderr``.

    A metric reported under several filters keeps the filter in its name (``exact_match,flexible-extract``).
    """
    keys = [key for key in row if key not in ROW_FACTS and "," in key]
    filters = Counter(key.split(",", 1)[0] for key in keys)
    out = {}
    for key in keys:
        metric, value = key.split(",", 1)[0], row[key]
        out[metric if filters[metric] == 1 else key] = None if value == "N/A" else _plain(value)
    return out


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python number JSON writes."""
    return value.item() if hasattr(value, "item") else value


def condition_results(results: dict[str, Any], tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{task: {metric: value}}`` for each requested task or group name."""
    rows = {**results.get("results", {}), **results.get("groups", {})}
    return {name: metrics_of(rows[name]) for name in tasks if name in rows}


def harness_setup(results: dict[str, Any], plan: HarnessPlan) -> dict[str, Any]:
    """The report's ``lm_eval_setup``: harness version, each task's version, shots and documents."""
    samples = results.get("n-samples", {})
    tasks = {name: {"version": results.get("versions", {}).get(name),
                    "num_fewshot": results.get("n-shot", {}).get(name),
                    "n_documents": (samples.get(name) or {}).get("effective"),
                    "higher_is_better": results.get("higher_is_better", {}).get(name)}
             for name in plan.tasks}
    return {"harness": HARNESS_DISTRIBUTION, "version": harness_version(), "tasks": tasks, "include": plan.include,
            "limit": plan.limit, "fewshot": plan.fewshot, "batch_size": plan.batch_size}
