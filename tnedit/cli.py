"""The `tnedit` command: a thin click shell over the library.

Verbs live in ``tnedit/commands/`` and are imported only when invoked, and those modules import
torch and transformers only inside their functions, so ``--help`` answers instantly.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

# verb -> "module:attribute" under tnedit.commands
VERBS: dict[str, str] = {
    "identify": "identify:identify",
    "select": "identify:select",
    "compare": "identify:compare",
    "apply": "apply:apply",
    "revert": "apply:revert",
    "inspect": "apply:inspect",
    "evaluate": "evaluate:evaluate",
    "push": "push:push",
    "run": "run:run",
}

SHORT_HELP: dict[str, str] = {
    "identify": "Rank Type-1/Type-2 transfer neurons (or LAPE, or a random control).",
    "select": "Re-rank a scores.safetensors file into a neuron set without recomputing.",
    "compare": "Overlap between two neuron sets.",
    "apply": "Bake zeroing/scaling of neurons into a standalone safetensors checkpoint.",
    "revert": "Restore an edited checkpoint's weights byte for byte.",
    "inspect": "Show a neuron set: per-layer counts and top neurons.",
    "evaluate": "Compare an original and an edited model; write JSON, Markdown and plots.",
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
        module = importlib.import_module(f"tnedit.commands.{module_name}")
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


def _user_errors() -> tuple[type[BaseException], ...]:
    from tnedit.architectures import UnknownArchitecture
    from tnedit.errors import TneditError
    from tnedit.neurons import NeuronFormatError

    return (TneditError, UnknownArchitecture, NeuronFormatError)


def main(argv: list[str] | None = None) -> Any:
    from tnedit.commands import common

    args = list(argv) if argv is not None else sys.argv[1:]
    common.ARGV = args
    debug = "--debug" in args or bool(os.environ.get("TNEDIT_DEBUG"))
    try:
        return group.main(args=args, prog_name="tnedit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("tnedit: interrupted; nothing was written", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except _user_errors() as exc:
        if debug:
            raise
        click.echo(f"tnedit: error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        click.echo("tnedit: interrupted; nothing was written", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
