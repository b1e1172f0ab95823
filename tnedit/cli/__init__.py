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
from typing import Any

import click

from tnedit.errors import TneditError  # layer 0, stdlib only: importing it keeps --help instant

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


def main(argv: list[str] | None = None) -> Any:
    import warnings

    from tnedit.cli import options
    from tnedit.formats.outputs import COMPLETED

    args = list(argv) if argv is not None else sys.argv[1:]
    options.ARGV = args
    COMPLETED.clear()
    debug = "--debug" in args or bool(os.environ.get("TNEDIT_DEBUG"))
    try:
        with _signals_as_interrupts(), warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_python_warning
            return group.main(args=args, prog_name="tnedit", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click wraps KeyboardInterrupt (and so SignalExit) in Abort
        cause = exc.__cause__ if isinstance(exc.__cause__, KeyboardInterrupt) else KeyboardInterrupt()
        click.echo(_interrupted_message(cause), err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        click.echo(_interrupted_message(exc), err=True)
        sys.exit(130)
    except Exception as exc:  # the one guard: any failure a user can trigger is one line and exit 2
        if debug:
            raise
        click.echo(f"tnedit: error: {describe_exception(exc)}", err=True)
        sys.exit(getattr(exc, "exit_code", 2) if isinstance(exc, click.ClickException | TneditError) else 2)


if __name__ == "__main__":
    main()
