"""Options and output helpers shared by the verbs."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click


def _silence_libraries(_ctx: click.Context, _param: click.Parameter, quiet: bool) -> bool:
    """--quiet also silences the progress bars and chatter of transformers and the Hub client."""
    if quiet:
        import os

        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["TQDM_DISABLE"] = "1"
    return quiet


quiet_option = click.option(
    "--quiet", "-q", is_flag=True, callback=_silence_libraries, help="No progress bars or chatter."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON result on stdout.")


# The arguments of the running invocation; main() sets it so in-process calls record theirs.
ARGV: list[str] | None = None


def command_line() -> str:
    args = ARGV if ARGV is not None else sys.argv[1:]
    return "tnedit " + " ".join(shlex.quote(a) for a in args)


def emit(result: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        click.echo(human)


def warn(message: str) -> None:
    click.echo(f"tnedit: warning: {message}", err=True)
