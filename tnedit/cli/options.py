"""Options and output helpers shared by the verbs, and click options generated from the settings classes.

:func:`settings_options` turns the fields of a settings dataclass (declared once with
:func:`tnedit.settings.setting`) into click options: the flags, default, help and ``Choice`` come from the
field, so a verb restates none of them. :func:`settings_from_options` builds the settings back from what
click parsed. Torch-free: ``--help`` imports no settings module that would pull torch.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from tnedit.model.distributed import launched_world, release_launcher
from tnedit.reporting import ProgressBar, TqdmReporter
from tnedit.settings import SettingField, check_choice, setting_fields


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


def run_alone(what: str) -> bool:
    """Under a launcher, let rank 0 run a command that is not data-parallel by itself: False on the other
    ranks (they exit); on rank 0 the launcher's variables are dropped, so what runs below is one process."""
    world = launched_world()
    if not world.is_distributed:
        return True
    if not world.is_main:
        return False
    warn(f"{what} is not data-parallel: rank 0 runs it alone and the other {world.size - 1} rank(s) exit")
    release_launcher()
    return True


# The arguments of the running invocation; main() sets it so in-process calls record theirs.
ARGV: list[str] | None = None


def command_line() -> str:
    args = ARGV if ARGV is not None else sys.argv[1:]
    return "tnedit " + " ".join(shlex.quote(a) for a in args)


def emit(result: dict[str, Any], as_json: bool, human: str) -> None:
    """The verb's result on stdout; rank 0 alone prints it in a data-parallel run."""
    if not launched_world().is_main:
        return
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        click.echo(human)


def warn(message: str) -> None:
    click.echo(f"tnedit: warning: {message}", err=True)


class ClickReporter(TqdmReporter):
    """The CLI's reporter: tqdm bars (none with ``--quiet``), warnings as ``tnedit: warning:`` lines."""

    def __init__(self, quiet: bool = False, log: bool = True):
        self.quiet = quiet
        self.shows_bars = not quiet
        self.logs = log and not quiet

    def bar(self, total: int, desc: str, unit: str = "batch", initial: int = 0) -> ProgressBar:
        return ProgressBar() if self.quiet else super().bar(total, desc, unit, initial)

    def log(self, message: str) -> None:
        if self.logs:
            click.echo(message, err=True)

    def warn(self, message: str) -> None:
        warn(message)


def reporter_for(quiet: bool, log: bool = True) -> ClickReporter:
    """The reporter a verb passes to the library; ``log=False`` keeps bars and warnings but drops log lines."""
    return ClickReporter(quiet, log)


# --- options generated from settings fields --------------------------------------------------------


def _click_type(field: SettingField) -> Any:
    if field.info.click_type is not None:
        return field.info.click_type
    if field.choices is not None:
        return click.Choice([str(choice) for choice in field.choices])
    for kind in (int, float):
        if field.type is kind or field.type == (kind | None):
            return kind
    return None


def _option(field: SettingField) -> Any:
    """The click option of one settings field."""
    declarations = [*field.flags, field.name]
    help_text = field.info.help or None
    default = None if field.required else field.default
    if field.type is bool or field.type == (bool | None):
        if default:
            positive = field.flags[0]
            declarations = [f"{positive}/--no-{positive.lstrip('-')}", field.name]
        return click.option(*declarations, is_flag=True, default=bool(default), help=help_text)
    if field.info.multiple:
        return click.option(*declarations, multiple=True, default=(), type=_click_type(field), help=help_text,
                            metavar=field.info.metavar, required=field.info.required)
    if isinstance(default, (list, tuple)):
        default = None
    return click.option(*declarations, type=_click_type(field), default=default, help=help_text,
                        show_default=field.info.show_default, metavar=field.info.metavar,
                        required=field.info.required)


def cli_fields(cls: type, only: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> list[SettingField]:
    """The fields of ``cls`` that become options: ``cli=True``, in ``only`` (and its order) when given."""
    fields = {f.name: f for f in setting_fields(cls) if f.info.cli and f.name not in exclude}
    if only is None:
        return list(fields.values())
    return [fields[name] for name in only if name in fields]


def settings_options(cls: type, only: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> Callable[[Any], Any]:
    """A decorator that adds one click option per CLI field of ``cls``, in declaration order."""
    options = [_option(field) for field in cli_fields(cls, only, exclude)]

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        # Recorded so a test can prove each option's default and help are the field's.
        command.__tnedit_settings__ = [*getattr(command, "__tnedit_settings__", []), cls]
        return command

    return decorate


def settings_from_options(cls: type, params: Mapping[str, Any], **values: Any) -> Any:
    """``cls`` built from click's parsed ``params`` (the fields among them) and explicit ``values``."""
    kwargs: dict[str, Any] = {}
    for field in setting_fields(cls):
        if field.name in values:
            kwargs[field.name] = values[field.name]
        elif field.name in params and field.info.cli:
            if field.info.multiple and not params[field.name]:
                continue  # a repeatable option not given: the field's own default, not an empty list
            kwargs[field.name] = _from_click(field, params[field.name])
    return cls(**kwargs)


def _from_click(field: SettingField, value: Any) -> Any:
    """click's value as the field's: a ``Choice`` string back to its ``Literal`` value, ``multiple`` as a list."""
    if value is None:
        return None
    if field.choices is not None and field.info.click_type is None:
        return check_choice(value, field.choices, field.flags[-1])
    if field.info.multiple:
        return list(value)
    return value
