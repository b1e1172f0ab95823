"""Tune's resume state: ``OUT/.tune-checkpoint/state.json``, rewritten atomically after every measured set.

It holds the candidate pool identify found, the greedy path and the trials so far, under a key of the
settings that shape them; a state of other settings (or another model, other data) is refused by name.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tnedit.formats.outputs import COMPLETED, atomic_file
from tnedit.identify.resume import check_resume_key, corrupt_state
from tnedit.reporting import Reporter
from tnedit.tune.search import GreedyState, Measurement

FORMAT = "tnedit.tune-checkpoint/1"
STATE_DIR = ".tune-checkpoint"


@dataclass
class TuneState:
    key: dict[str, Any]
    pool: dict[str, list[list[int]]] = field(default_factory=dict)  # neuron type -> [[layer, index], ...]
    greedy: GreedyState = field(default_factory=GreedyState)
    greedy_done: bool = False
    trials: list[Measurement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "pool": self.pool, "greedy": self.greedy.to_dict(),
                "greedy_done": self.greedy_done, "trials": [m.to_dict() for m in self.trials]}


class TuneStore:
    """Where one run's state lives: ``OUT/.tune-checkpoint/state.json``."""

    def __init__(self, out_dir: Path, key: dict[str, Any]):
        self.dir = out_dir / STATE_DIR
        self.key = key
        self._made_out_dir = not out_dir.exists()  # a run that writes nothing leaves no empty directory

    @property
    def path(self) -> Path:
        return self.dir / "state.json"

    def open(self, resume: bool, reporter: Reporter) -> TuneState:
        """The saved state with ``resume`` (a warning and a fresh one when there is none), else a fresh one."""
        if not resume:
            self.remove()
            return TuneState(self.key)
        if not self.path.is_file():
            reporter.warn(f"--resume: no state under {self.dir}; starting from the beginning")
            return TuneState(self.key)
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise corrupt_state(self.path, f"unreadable resume state ({exc})") from None
        check_resume_key(raw, self.key, self.path)
        try:
            return TuneState(self.key, {str(k): [[int(a), int(b)] for a, b in v] for k, v in raw["pool"].items()},
                             GreedyState.from_dict(raw["greedy"]), bool(raw["greedy_done"]),
                             [Measurement.from_dict(m) for m in raw["trials"]])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise corrupt_state(self.path, f"the state lacks or misshapes {exc}") from None

    def save(self, state: TuneState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path, record=False) as tmp:
            tmp.write_text(json.dumps(state.to_dict()), encoding="utf-8")
        if self.dir.absolute() not in COMPLETED:  # an interrupted run names the state --resume continues from
            COMPLETED.append(self.dir.absolute())

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.absolute() in COMPLETED:
            COMPLETED.remove(self.dir.absolute())
        if self._made_out_dir and self.dir.parent.is_dir() and not any(self.dir.parent.iterdir()):
            self.dir.parent.rmdir()
