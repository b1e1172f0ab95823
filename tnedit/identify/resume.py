"""Running passes batch by batch, and the on-disk resume state that lets an interrupted identify continue.

The state (``tnedit.identify-checkpoint/1``) is a directory under ``-o``: ``state.json`` names a
``sums-<step>.safetensors`` written before it. Both files are replaced atomically (via
:mod:`tnedit.formats.outputs`), so a crash at any moment leaves a consistent pair.

Under a launcher (:mod:`tnedit.model.distributed`) each rank runs its share of a pass's batches; the
ranks' sums are added when the pass ends. Rank 0 alone writes the state: finished passes as the added
sums, the current pass as every rank's own partial sums (``rank<r>/…``, gathered to rank 0), so a resumed
run continues each rank where it stopped and ends bit-identical to an uninterrupted run of as many ranks.
Every rank reads the state when it resumes (the output directory is shared, as it is for the outputs).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from tnedit.errors import InputError
from tnedit.formats.outputs import COMPLETED, atomic_file, contained_name
from tnedit.model.batching import encode_batches, encode_texts, num_batches
from tnedit.model.capture import LastTokenCapture, LastTokenStates
from tnedit.model.distributed import SINGLE, World
from tnedit.model.loading import LoadedModel, resolve_max_length
from tnedit.reporting import Reporter, resolve_reporter

FORMAT = "tnedit.identify-checkpoint/1"
RESUME_DIR = ".identify-checkpoint"

BatchCallback = Callable[[str, int, int], None]  # (pass name, batches done, batches total)


class Pass(Protocol):
    """A resumable pass over sentences: what it captures, how it sums a batch, and its sums as tensors."""

    name: str
    want: tuple[str, ...]
    texts: list[str]
    layers: list[int]

    def update(self, states: LastTokenStates, rows: Sequence[int]) -> None: ...

    def export(self) -> dict[str, torch.Tensor]: ...

    def load(self, tensors: Mapping[str, torch.Tensor]) -> None: ...


# --- the state file ------------------------------------------------------------------------------


@dataclass
class ResumeState:
    """``state.json``: the settings key it was made with, the finished passes and where the current one stopped."""

    key: dict[str, Any]
    tensors: str | None = None  # the sums file next to it
    done: list[str] = field(default_factory=list)
    current: str | None = None
    batches_done: int = 0
    step: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "tensors": self.tensors, "done": self.done,
                "current": self.current, "batches_done": self.batches_done, "step": self.step}

    @classmethod
    def from_dict(cls, obj: Any, where: Path) -> ResumeState:
        if not isinstance(obj, dict):
            raise corrupt_state(where, f"the resume state must be a JSON object, got {type(obj).__name__}")
        try:
            return cls(key=obj.get("key"), tensors=obj.get("tensors"), done=[str(x) for x in obj.get("done", [])],
                       current=obj.get("current"), batches_done=int(obj.get("batches_done", 0)),
                       step=int(obj.get("step", 0)))
        except (TypeError, ValueError):
            raise corrupt_state(where, "keys 'done', 'batches_done' and 'step' must be a list and counts") from None


def corrupt_state(where: Path, what: str) -> InputError:
    return InputError(f"{where}: {what}; rerun without --resume to start over")


def check_resume_key(state: Any, key: dict[str, Any], where: Path) -> None:
    """Refuse a state made with other settings, naming the settings that differ."""
    if not isinstance(state, dict):
        raise corrupt_state(where, f"the resume state must be a JSON object, got {type(state).__name__}")
    if state.get("key") != key:
        old = state.get("key") if isinstance(state.get("key"), dict) else {}
        diff = sorted(k for k in set(key) | set(old) if key.get(k) != old.get(k))
        raise InputError(
            f"{where}: cannot resume: the checkpoint was made with different settings "
            f"({', '.join(diff)}); rerun with the same options or without --resume"
        )


class ResumeStore:
    """The resume directory of one run: its state, the partial sums, and their atomic replacement."""

    def __init__(self, directory: Path, key: dict[str, Any], world: World = SINGLE):
        self.dir = directory
        self.state = ResumeState(key)
        self.tensors: dict[str, torch.Tensor] = {}
        self.world = world  # rank 0 alone writes and removes the state

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def load(self) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise corrupt_state(self.state_path, f"unreadable resume state ({exc})") from None
        check_resume_key(raw, self.state.key, self.state_path)
        self.state = ResumeState.from_dict(raw, self.state_path)
        if self.state.tensors:
            tensor_file = contained_name(self.dir, self.state.tensors, f"{self.state_path}: key 'tensors'")
            if not tensor_file.is_file():
                raise corrupt_state(self.state_path, f"names {tensor_file.name}, which is missing")
            try:
                self.tensors = dict(load_file(str(tensor_file)))
            except (SafetensorError, OSError, ValueError) as exc:
                raise corrupt_state(self.state_path, f"{tensor_file.name} is not readable ({exc})") from None

    def restore(self, p: Pass, own: bool = False) -> None:
        """Load one pass's sums from the state (``own``: this rank's partial sums); a state missing them is
        refused, one line."""
        prefix = rank_prefix(self.world.rank) if own and self.world.is_distributed else None
        tensors = self.tensors if prefix is None else {
            name.removeprefix(prefix): value for name, value in self.tensors.items() if name.startswith(prefix)}
        try:
            p.load(tensors)
        except (KeyError, IndexError, RuntimeError) as exc:
            raise corrupt_state(self.state_path, f"the saved sums lack or misshape {exc} for pass {p.name}") from None

    def _write(self) -> None:
        from safetensors.torch import save_file

        if not self.world.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state.step += 1
        name = f"sums-{self.state.step:06d}.safetensors"
        with atomic_file(self.dir / name, record=False) as tmp:  # the state is listed as a whole
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp))
        self.state.tensors = name
        with atomic_file(self.state_path, record=False) as tmp:  # replaced last: it names a sums file already complete
            tmp.write_text(json.dumps(self.state.to_dict(), indent=1), encoding="utf-8")
        if self._listed not in COMPLETED:  # an interrupted run names the resume state it keeps
            COMPLETED.append(self._listed)
        for old in self.dir.glob("sums-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def save_partial(self, p: Pass, batches_done: int) -> None:
        """Keep the current pass's sums after ``batches_done`` steps (every rank's own, gathered to rank 0)."""
        ranks = self.world.gather_to_main(p.export())
        if ranks is None:
            return
        if self.world.is_distributed:
            for rank, exported in enumerate(ranks):
                self.tensors.update({f"{rank_prefix(rank)}{name}": value for name, value in exported.items()})
        else:
            self.tensors.update(ranks[0])
        self.state.current, self.state.batches_done = p.name, batches_done
        self._write()

    def finish(self, p: Pass, persist: bool) -> None:
        """Keep a finished pass's sums (the ranks' sums added); its partial sums go."""
        self.tensors = {name: value for name, value in self.tensors.items() if not name.startswith(RANK_PREFIX)}
        self.tensors.update(p.export())
        if p.name not in self.state.done:
            self.state.done.append(p.name)
        self.state.current, self.state.batches_done = None, 0
        if persist:
            self._write()

    @property
    def _listed(self) -> Path:
        return Path(os.path.abspath(self.dir))

    def remove(self) -> None:
        if not self.world.is_main:
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._listed in COMPLETED:
            COMPLETED.remove(self._listed)


RANK_PREFIX = "rank"


def rank_prefix(rank: int) -> str:
    """Where one rank's partial sums of the current pass live in the state's tensors."""
    return f"{RANK_PREFIX}{rank}/"


def open_resume_store(out_dir: Path | None, key: dict[str, Any], *, checkpoint_every: int | None, resume: bool,
                      reporter: Reporter, world: World = SINGLE) -> ResumeStore | None:
    """The run's resume store: loaded with ``resume``, else a fresh one (an old state is removed); None without -o."""
    if out_dir is None or not (checkpoint_every or resume):
        return None
    store = ResumeStore(out_dir / RESUME_DIR, key, world)
    if resume:
        if store.exists():
            store.load()
        else:
            reporter.warn(f"--resume: no checkpoint under {store.dir}; starting from the beginning")
    elif store.exists():
        store.remove()
    return store


# --- running passes ------------------------------------------------------------------------------


class Runner:
    """Runs passes batch by batch with optional periodic saves of the resume state and a per-batch callback.

    Under a launcher each rank runs its share of the batches (``world``) and the ranks' sums are added
    when a pass ends; ``checkpoint_every`` then counts steps of one batch per rank.
    """

    def __init__(self, lm: LoadedModel, *, batch_size: int, max_length: int | None, store: ResumeStore | None = None,
                 checkpoint_every: int | None = None, on_batch: BatchCallback | None = None,
                 reporter: Reporter | None = None, world: World = SINGLE):
        self.lm = lm
        self.batch_size = batch_size
        self.max_length = resolve_max_length(lm, max_length)
        self.store = store
        self.checkpoint_every = checkpoint_every
        self.on_batch = on_batch
        self.reporter = resolve_reporter(reporter)
        self.world = world
        self.batches = 0  # batches of every rank together

    @torch.no_grad()
    def run(self, p: Pass) -> list[bool]:
        """Run one pass (or restore it from the resume state); returns which of its sentences were truncated."""
        encoded = encode_texts(self.lm.tokenizer, p.texts, self.max_length)
        store, world = self.store, self.world
        if store is not None and p.name in store.state.done:
            store.restore(p)
            return encoded.truncated
        start = 0
        if store is not None and store.state.current == p.name and store.state.batches_done:
            store.restore(p, own=True)
            start = store.state.batches_done
        total = num_batches(len(p.texts), self.batch_size)
        with self.reporter.progress(total, p.name, initial=world.batches_done(start, total)) as bar:
            batches = encode_batches(self.lm.tokenizer, encoded, self.batch_size, self.lm.device, only=world.owns)
            with LastTokenCapture(self.lm, p.want, p.layers) as capture:
                # A state is saved only before the last step, so every rank had a batch at each step before it.
                batches = itertools.islice(batches, start, None)
                for step, index in world.shared_steps(total, start):
                    if index is not None:
                        batch = next(batches)
                        p.update(capture.run(batch), batch.rows)
                    done = world.step_batches(step, total)
                    self.batches += done
                    bar.update(done)
                    self._after_batch(p, step + 1, total)
        if world.is_distributed:
            p.load(world.all_reduce(p.export()))
        if store is not None:
            store.finish(p, persist=bool(self.checkpoint_every))
        return encoded.truncated

    def _after_batch(self, p: Pass, steps_done: int, total: int) -> None:
        store, every, world = self.store, self.checkpoint_every, self.world
        if store is not None and every and steps_done % every == 0 and steps_done < world.steps(total):
            store.save_partial(p, steps_done)
        if self.on_batch is not None:
            self.on_batch(p.name, world.batches_done(steps_done, total), total)
