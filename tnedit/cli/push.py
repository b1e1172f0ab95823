"""`tnedit push`: upload an edited checkpoint to the Hugging Face Hub (README last, then verify)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from tnedit.cli.options import emit, json_option, quiet_option, reporter_for, settings_from_options, settings_options
from tnedit.hub import PushSettings


def _endpoint(given: str | None) -> str | None:
    """--endpoint, else $HF_ENDPOINT (read now, not when huggingface_hub was imported), else the Hub's default."""
    return given or os.environ.get("HF_ENDPOINT") or None


@click.command("push")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.argument("repo")
@settings_options(PushSettings)
@quiet_option
@json_option
def push_command(directory: str, repo: str, quiet: bool, as_json: bool, **options: Any) -> None:
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
    from tnedit.hub import push_checkpoint

    settings = settings_from_options(
        PushSettings, options, dir=directory, repo=repo, endpoint=_endpoint(options.get("endpoint"))
    )
    result = push_checkpoint(settings, reporter=reporter_for(quiet))
    emit(result.to_dict(), as_json, result.describe())


def push_after_apply(out_dir: str | Path, repo: str, quiet: bool = False, no_cache: bool = False) -> dict[str, Any]:
    """`tnedit apply --push-to-hub REPO`: push the directory apply just wrote; returns the result as a dict."""
    from tnedit.hub import push_checkpoint

    reporter = reporter_for(quiet)
    settings = PushSettings(dir=out_dir, repo=repo, endpoint=_endpoint(None), no_cache=no_cache)
    result = push_checkpoint(settings, reporter=reporter)
    reporter.log(f"tnedit: {result.describe()}")
    return result.to_dict()
