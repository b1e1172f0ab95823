"""Data-parallel runs over torch.distributed: the ranks a launcher started, their shards, and the sums they combine.

``torchrun`` and ``accelerate launch`` start one process per rank and tell each its place through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`join_world` turns that into a process group (gloo for CPU tensors, NCCL as well when the ranks use
CUDA); without a launcher, or with one rank, nothing is initialised and every helper here is the identity,
so a distributed command started without a launcher is the ordinary single-process run.

Work is shared by batches: the batches of a pass are built exactly as in one process (same sentences, same
padding), and batch ``b`` belongs to rank ``b mod world size``. Every statistic tnedit accumulates is a sum,
so each rank's partial sums are added with ``all_reduce`` and equal the one-process sums up to the order of
the fp64 additions. The ranks move in steps of one batch each and confirm every step with a one-element
``all_reduce`` (:meth:`World.step_done`): a rank that dies or stops answering turns into one
:class:`~tnedit.errors.DistributedRunError` on the others within a step, instead of a hang.

Torch is imported inside the functions: the CLI reads :func:`launched_world` without loading it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tnedit.errors import DistributedRunError, InputError
from tnedit.reporting import Reporter, SilentReporter

# What a launcher sets; all four are needed to join a process group by environment.
LAUNCHER_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r}: expected a whole number (set by the launcher)") \
            from None


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one data-parallel run (one rank when not launched)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes outputs and shows progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    def steps(self, total: int) -> int:
        """Steps of one batch per rank that cover ``total`` batches (the last may leave ranks idle)."""
        return (total + self.size - 1) // self.size

    def batch_at(self, step: int, total: int) -> int | None:
        """The batch this rank runs at ``step``, or None when the batches ran out before it."""
        index = step * self.size + self.rank
        return index if index < total else None

    def owns(self, batch: int) -> bool:
        return batch % self.size == self.rank

    def batches_done(self, steps: int, total: int) -> int:
        """Batches of all ranks together after ``steps`` steps."""
        return min(steps * self.size, total)

    def step_batches(self, step: int, total: int) -> int:
        """Batches of all ranks together at ``step`` (what a progress bar of the whole run advances by)."""
        return self.batches_done(step + 1, total) - self.batches_done(step, total)

    def shared_steps(self, total: int, start: int = 0) -> Iterator[tuple[int, int | None]]:
        """``(step, this rank's batch at it or None)`` from ``start``; each step is confirmed by every rank
        (:meth:`step_done`) once the caller's loop body is done with it."""
        for step in range(start, self.steps(total)):
            yield step, self.batch_at(step, total)
            self.step_done()

    def step_done(self) -> None:
        """Every rank confirms a step: raises DistributedRunError when another rank has stopped."""
        if self.is_distributed:
            import torch

            tick = torch.zeros(1, dtype=torch.int64, device=_step_device())
            _collective("all_reduce", lambda: _dist().all_reduce(tick), self)

    def all_reduce(self, tensors: Mapping[str, Any]) -> dict[str, Any]:
        """The element-wise sums over the ranks of ``tensors`` (name -> tensor), returned on the CPU.

        Tensors of one dtype travel as one flat buffer; fp64 sums stay fp64 and counts int64.
        """
        if not self.is_distributed:
            return dict(tensors)
        out: dict[str, Any] = {}
        for names in _by_dtype(tensors).values():
            flat = _flat(tensors, names)
            _collective("all_reduce", lambda flat=flat: _dist().all_reduce(flat), self)
            out.update(_unflat(flat.cpu(), tensors, names))
        return out

    def all_gather(self, value: T) -> list[T]:
        """``value`` of every rank, in rank order (picklable Python objects: strings, lists, dicts)."""
        if not self.is_distributed:
            return [value]
        gathered: list[Any] = [None] * self.size
        _collective("all_gather_object", lambda: _dist().all_gather_object(gathered, value), self)
        return gathered

    def gather_to_main(self, value: T) -> list[T] | None:
        """``value`` of every rank in rank order on rank 0, None on the others."""
        if not self.is_distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.size if self.is_main else None
        _collective("gather_object", lambda: _dist().gather_object(value, gathered, dst=0), self)
        return gathered

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.is_distributed:
            return value
        box = [value]
        _collective("broadcast_object_list", lambda: _dist().broadcast_object_list(box, src=0), self)
        return box[0]


SINGLE = World()


def rank_reporter(world: World, reporter: Reporter) -> Reporter:
    """``reporter`` on rank 0; nothing on the other ranks, whose bars and warnings would repeat rank 0's."""
    return reporter if world.is_main else SilentReporter()


def launched_world() -> World:
    """The world a launcher described in the environment (torch-free); one rank without a launcher."""
    if not all(os.environ.get(name) for name in LAUNCHER_VARIABLES):
        return SINGLE
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"the launcher set RANK={rank} and WORLD_SIZE={size}: expected 0 <= RANK < WORLD_SIZE")
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    return World(rank, size, _env_int("LOCAL_RANK", rank % max(local_size, 1)), local_size)


def release_launcher() -> None:
    """Forget the launcher's world in this process: what runs next runs as one process (rank 0 alone)."""
    for name in (*LAUNCHER_VARIABLES, "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        os.environ.pop(name, None)


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _initialised() -> bool:
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized())


def current_world() -> World:
    """The world of the joined process group, else one rank (a launched run joins in :func:`join_world`)."""
    if not _initialised():
        return SINGLE
    dist = _dist()
    launched = launched_world()
    return World(dist.get_rank(), dist.get_world_size(), launched.local_rank, launched.local_size)


def uses_cuda(device: str | None, device_map: str | None = None) -> bool:
    """Whether ranks of this run compute on CUDA (then NCCL joins gloo in the process group)."""
    import torch

    if not torch.cuda.is_available():
        return False
    return bool(device_map) or device in (None, "auto") or str(device).startswith("cuda")


def join_world(device: str | None = "auto", device_map: str | None = None) -> World:
    """Join the launcher's process group once per process; one rank (nothing joined) without a launcher.

    The group has gloo for CPU tensors and, when the ranks compute on CUDA, NCCL for CUDA tensors; each
    rank's default CUDA device is its ``LOCAL_RANK``.
    """
    launched = launched_world()
    if not launched.is_distributed or _initialised():
        return current_world()
    dist = _dist()
    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed: run without a launcher")
    cuda = uses_cuda(device, device_map)
    if cuda:
        import torch

        count = torch.cuda.device_count()
        # A rank that spreads its model over its share of the GPUs talks to the others from the first of them.
        torch.cuda.set_device(local_gpus(launched, count)[0] if device_map else launched.local_rank % count)
    try:
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    except (RuntimeError, ValueError) as exc:
        raise DistributedRunError(f"rank {launched.rank} of {launched.size}: could not join the other ranks "
                                  f"({_first_line(exc)})") from None
    return current_world()


def leave_world() -> None:
    """Tear the process group down (torch warns at exit about a group left standing)."""
    if _initialised():
        _dist().destroy_process_group()


def _collective_device() -> Any:
    """Where collectives run: the rank's CUDA device when NCCL is in the group, else the CPU (gloo)."""
    import torch

    dist = _dist()
    backend = str(dist.get_backend())
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _step_device() -> Any:
    """Where steps are confirmed: the CPU whenever gloo is in the group, because a gloo collective blocks
    until every rank answers and fails at once when one has died, where NCCL's would only be enqueued."""
    import torch

    return torch.device("cpu") if "gloo" in str(_dist().get_backend()) else _collective_device()


def _first_line(exc: BaseException) -> str:
    """The cause in a few words: gloo's messages start with a source location and end with advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def _collective(name: str, call: Callable[[], Any], world: World) -> None:
    """Run one collective; a peer that died or timed out becomes one DistributedRunError line."""
    try:
        call()
    except RuntimeError as exc:  # DistBackendError, DistNetworkError and gloo's own errors are RuntimeErrors
        raise DistributedRunError(f"rank {world.rank} of {world.size}: another rank stopped or stopped answering "
                                  f"({name}: {_first_line(exc)}); this rank stops too") from None


def _by_dtype(tensors: Mapping[str, Any]) -> dict[Any, list[str]]:
    groups: dict[Any, list[str]] = {}
    for name, tensor in tensors.items():
        groups.setdefault(tensor.dtype, []).append(name)
    return groups


def _flat(tensors: Mapping[str, Any], names: Sequence[str]) -> Any:
    import torch

    device = _collective_device()
    return torch.cat([tensors[name].detach().reshape(-1).to(device) for name in names])


def _unflat(flat: Any, tensors: Mapping[str, Any], names: Sequence[str]) -> Iterator[tuple[str, Any]]:
    offset = 0
    for name in names:
        shape = tensors[name].shape
        count = tensors[name].numel()
        yield name, flat[offset : offset + count].reshape(shape).clone()
        offset += count


def local_gpus(world: World, visible: int) -> list[int]:
    """The CUDA devices one rank may spread a model over with ``--device-map``: its share of the node's GPUs."""
    if not world.is_distributed:
        return list(range(visible))
    per_rank = visible // max(world.local_size, 1)
    if per_rank < 1:
        raise InputError(f"--device-map: {world.local_size} ranks on this node share {visible} GPU(s); "
                         "start at most one rank per GPU")
    first = world.local_rank * per_rank
    return list(range(first, first + per_rank))


def device_map_memory(world: World) -> dict[str, Any]:
    """``from_pretrained`` arguments that keep a ``--device-map`` model of one rank on that rank's GPUs."""
    import torch

    if not world.is_distributed or not torch.cuda.is_available():
        return {}
    gpus = local_gpus(world, torch.cuda.device_count())
    return {"max_memory": {index: torch.cuda.mem_get_info(index)[0] for index in gpus}}
