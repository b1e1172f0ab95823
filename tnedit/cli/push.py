"""`tnedit push`: upload an edited checkpoint to the Hugging Face Hub (README last, then verify)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from tnedit.cli.options import emit, json_option, quiet_option, warn


def _progress(message: str) -> None:
    click.echo(f"tnedit: {message}", err=True)


@click.command()
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.argument("repo")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--revision", metavar="BRANCH", help="Upload to this branch; it is created from main if missing.")
@click.option("--commit-message", "-m", help="Message of the upload commit (the model card follows in its own).")
@click.option("--large", is_flag=True, help="Use huggingface_hub's resumable large-folder upload where it has one.")
@click.option(
    "--endpoint", envvar="HF_ENDPOINT", metavar="URL", help="Hub endpoint [default: $HF_ENDPOINT or huggingface.co]."
)
@quiet_option
@json_option
def push(directory, repo, private, revision, commit_message, large, endpoint, quiet, as_json):
    """Upload DIR, a checkpoint written by `tnedit apply`, to the Hub repo REPO.

    DIR is checked first: every weight file must still have the SHA-256 recorded in tnedit.json,
    and the model card must carry base_model, tags, library_name and the base model's licence
    (a missing card is regenerated, incomplete metadata is added; DIR is never written). Every
    file but README.md is uploaded, then README.md in a last commit, then each file's checksum on
    the Hub is compared with tnedit.json. The token comes from HF_TOKEN or `huggingface-cli login`.

    \b
    Example:
      tnedit push gemma-ja-t1 me/gemma-3-270m-ja-type1-zeroed --private
      tnedit push edited me/model --revision experiments -m "zero top-200 Type-1 ja neurons"
    """
    from tnedit.hub import PushSettings, describe, push_checkpoint

    settings = PushSettings(
        dir=directory,
        repo=repo,
        private=private,
        revision=revision,
        commit_message=commit_message,
        large=large,
        endpoint=endpoint or None,
    )
    result = push_checkpoint(settings, progress=not quiet, log=_progress, warn=warn)
    emit(result.to_dict(), as_json, describe(result))


def push_after_apply(out_dir: str | Path, repo: str, quiet: bool = False) -> dict[str, Any]:
    """`tnedit apply --push-to-hub REPO`: push the directory apply just wrote; returns the result as a dict."""
    from tnedit.hub import PushSettings, describe, push_checkpoint

    settings = PushSettings(dir=out_dir, repo=repo, endpoint=os.environ.get("HF_ENDPOINT") or None)
    result = push_checkpoint(settings, progress=not quiet, log=_progress, warn=warn)
    if not quiet:
        _progress(describe(result))
    return result.to_dict()
