"""`tnedit run RECIPE`: a whole pipeline from one YAML file."""

from __future__ import annotations

import click

from tnedit.cli.options import emit, json_option, quiet_option, reporter_for


def _summary_table(headline: list[dict]) -> str:
    if not headline:
        return ""
    columns = [c for c in headline[0] if not isinstance(headline[0][c], dict | list)]
    widths = {c: max(len(str(c)), *(len(_fmt(row.get(c))) for row in headline)) for c in columns}
    lines = ["  ".join(str(c).ljust(widths[c]) for c in columns)]
    lines.append("  ".join("-" * widths[c] for c in columns))
    for row in headline:
        lines.append("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
    return "\n".join(lines)


def _shown(path: str) -> str:
    """A resolved path as the user would type it: relative when it lies under the working directory."""
    import os

    relative = os.path.relpath(path)
    return path if relative == ".." or relative.startswith(".." + os.sep) else relative


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


@click.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe field, e.g. --set identify.k=500 (repeatable).",
)
@click.option("--force", is_flag=True, help="Rerun every step even if its output is up to date.")
@click.option("--dry-run", is_flag=True,
              help="Validate the recipe, check that its model and data and neurons files exist, and print it "
                   "with resolved paths; run nothing.")
@quiet_option
@json_option
def run_command(recipe, overrides, force, dry_run, quiet, as_json):
    """Run the pipeline a RECIPE describes: identify, apply each edit, evaluate, push.

    A step whose output exists with the same settings hash is skipped unless --force. Paths in
    RECIPE are relative to its directory (values given with --set to the working directory); a
    model name of the form owner/name that is no local path is a Hub id. ${VAR} and
    ${VAR:-default} in a value are read from the environment.

    \b
    Example:
      tnedit run recipes/gemma3-270m-demo.yaml
      tnedit run recipes/llama3-8b-paper.yaml --set identify.k=500 --set model.device=cuda
    """
    import json

    from tnedit.recipes import check_inputs, load_recipe, recipe_to_dict

    parsed = load_recipe(recipe, list(overrides))
    check_inputs(parsed, recipe)
    if dry_run:
        click.echo(json.dumps(recipe_to_dict(parsed), indent=2))
        return
    from tnedit.recipes import RecipeRunner

    reporter = reporter_for(quiet, log=not as_json)  # --json lists the steps itself
    result = RecipeRunner(parsed, force=force, reporter=reporter).run()
    summary = {
        "recipe": parsed.name,
        "output": parsed.output,
        "steps": [vars(s) for s in result.steps],
        "headline": result.headline,
        "reports": result.report_paths,
    }
    human = [f"recipe {parsed.name}: {len(result.steps)} step(s), output in {_shown(parsed.output)}"]
    table = _summary_table(result.headline)
    if table:
        human += ["", table]
    for path in result.report_paths:
        human.append(f"report: {_shown(path)}")
    emit(summary, as_json, "\n".join(human))
