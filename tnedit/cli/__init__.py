"""The `tnedit` command: a thin click shell over the library.

Verbs live in ``tnedit/cli/`` (one module each) and are imported only when invoked, and those modules import
torch and transformers only inside their functions, so ``--help`` answers instantly.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from tnedit.errors import DistributedRunError, TneditError  # layer 0, stdlib only: keeps --help instant

if TYPE_CHECKING:
    from tnedit.model.distributed import World

# verb -> "module:attribute" under tnedit.cli
VERBS: dict[str, str] = {
    "identify": "identify:identify_command",
    "select": "identify:select_command",
    "compare": "identify:compare_command",
    "apply": "apply:apply_command",
    "revert": "apply:revert_command",
    "inspect": "apply:inspect_command",
    "evaluate": "evaluate:evaluate_command",
    "tune": "tune:tune_command",
    "push": "push:push_command",
    "run": "run:run_command",
}

# Verbs whose forward passes the ranks of torchrun / accelerate launch share; any other verb runs on rank 0 alone.
DATA_PARALLEL_VERBS: frozenset[str] = frozenset({"identify", "evaluate"})

SHORT_HELP: dict[str, str] = {
    "identify": "Rank Type-1/Type-2 transfer neurons (or LAPE, or a random control).",
    "select": "Re-rank a scores.safetensors file into a neuron set without recomputing.",
    "compare": "Overlap between two neuron sets.",
    "apply": "Bake zeroing/scaling of neurons into a standalone safetensors checkpoint.",
    "revert": "Restore an edited checkpoint's weights byte for byte.",
    "inspect": "Show a neuron set: per-layer counts and top neurons.",
    "evaluate": "Compare an original and an edited model; write JSON, Markdown and plots.",
    "tune": "Search a neuron set that breaks one language and keeps the others within a bound.",
    "push": "Upload an edited checkpoint to the Hugging Face Hub.",
    "run": "Run a whole pipeline from a recipe YAML.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(VERBS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = VERBS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(f"tnedit.cli.{module_name}")
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing verbs must not import them: use the static summaries.
        with formatter.section("Commands"):
            formatter.write_dl([(name, SHORT_HELP[name]) for name in VERBS])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tnedit")
@click.option("--debug", is_flag=True, envvar="TNEDIT_DEBUG", help="Show tracebacks instead of one-line errors.")
@click.pass_context
def group(ctx: click.Context, debug: bool) -> None:
    """tnedit: find, edit and ship transfer neurons of multilingual LLMs.

    Tezuka & Inoue, "The Transfer Neurons Hypothesis", EMNLP 2025.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


class SignalExit(KeyboardInterrupt):
    """SIGTERM or SIGHUP, delivered like Ctrl-C so that every partial output is removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signal_name = signal.Signals(signum).name


def _raise_signal_exit(signum: int, _frame: Any) -> None:
    raise SignalExit(signum)


@contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SignalExit for the duration of one command (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, _raise_signal_exit) for signum in wanted}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def one_line(text: str) -> str:
    """Messages of libraries may span lines; the CLI's contract is one line per error."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe_exception(exc: BaseException) -> str:
    """A one-line description of any exception a user can trigger."""
    if isinstance(exc, TneditError):
        return one_line(str(exc))
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        return one_line(f"{where}: {exc.strerror}" if where else exc.strerror)
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        return one_line(f"{exc.format_message()} (see '{exc.ctx.command_path} --help')")
    if isinstance(exc, click.ClickException):
        return one_line(exc.format_message())
    text = one_line(str(exc)) or "(no message)"
    return f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)"


def _interrupted_message(exc: KeyboardInterrupt) -> str:
    from tnedit.formats.outputs import COMPLETED

    cause = f"interrupted by {exc.signal_name}" if isinstance(exc, SignalExit) else "interrupted"
    if not COMPLETED:
        return f"tnedit: {cause}; nothing was written"
    kept = ", ".join(str(p) for p in COMPLETED[-3:])
    return f"tnedit: {cause}; kept the outputs completed before it ({kept}); nothing else was written"


def _show_python_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                         line: Any = None) -> None:
    click.echo(f"tnedit: warning: {one_line(str(message))}", err=True)


def _verb(args: list[str]) -> str | None:
    """The verb of a command line (its first word that is not an option of the group)."""
    return next((a for a in args if not a.startswith("-")), None)


def _report_failure(exc: Exception, world: World) -> None:
    """One line for a failure; other ranks leave an input error, which every rank meets alike, to rank 0."""
    if not world.is_main:
        alike = isinstance(exc, click.ClickException) or (
            isinstance(exc, TneditError) and not isinstance(exc, DistributedRunError) and exc.exit_code == 2)
        if alike:
            return
        click.echo(f"tnedit: error: rank {world.rank}: {describe_exception(exc)}", err=True)
        return
    click.echo(f"tnedit: error: {describe_exception(exc)}", err=True)


def _run(args: list[str], debug: bool) -> Any:
    """The command itself; under a launcher, a verb that is not data-parallel runs on rank 0 alone."""
    import warnings

    from tnedit.cli import options

    verb = _verb(args)
    if verb in VERBS and verb not in DATA_PARALLEL_VERBS and not options.run_alone(f"tnedit {verb}"):
        return None
    with _signals_as_interrupts(), warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_python_warning
        return group.main(args=args, prog_name="tnedit", standalone_mode=False)


def main(argv: list[str] | None = None) -> Any:
    from tnedit.cli import options
    from tnedit.formats.outputs import COMPLETED
    from tnedit.model.distributed import launched_world, leave_world

    args = list(argv) if argv is not None else sys.argv[1:]
    options.ARGV = args
    COMPLETED.clear()
    debug = "--debug" in args or bool(os.environ.get("TNEDIT_DEBUG"))
    try:
        world = launched_world()
    except TneditError as exc:
        click.echo(f"tnedit: error: {describe_exception(exc)}", err=True)
        sys.exit(exc.exit_code)
    try:
        return _run(args, debug)
    except click.exceptions.Abort as exc:  # click wraps KeyboardInterrupt (and so SignalExit) in Abort
        cause = exc.__cause__ if isinstance(exc.__cause__, KeyboardInterrupt) else KeyboardInterrupt()
        if world.is_main:
            click.echo(_interrupted_message(cause), err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        if world.is_main:
            click.echo(_interrupted_message(exc), err=True)
        sys.exit(130)
    except Exception as exc:  # the one guard: any failure a user can trigger is one line and exit 2
        if debug:
            raise
        _report_failure(exc, world)
        sys.exit(getattr(exc, "exit_code", 2) if isinstance(exc, click.ClickException | TneditError) else 2)
    finally:
        if "torch.distributed" in sys.modules:
            leave_world()


if __name__ == "__main__":
    main()
