"""The CLI's one guard: every failure is one line and exit 2, signals exit 130, --debug keeps tracebacks."""

from __future__ import annotations

import errno
import os
import signal
import warnings

import click
import pytest

from tests.support.hostile import expect_clean_failure, run_cli
from tnedit import cli
from tnedit.formats.outputs import atomic_directory


def _verb(body):
    """Serve ``body`` as the verb ``boom`` (the guard must not depend on which verb fails)."""

    @click.command("boom")
    def boom():
        body()

    return boom


@pytest.fixture
def boom_verb(monkeypatch):
    def install(body):
        real = cli.LazyGroup.get_command

        def get_command(self, ctx, name):
            return _verb(body) if name == "boom" else real(self, ctx, name)

        monkeypatch.setattr(cli.LazyGroup, "get_command", get_command)

    return install


@pytest.mark.parametrize(
    "args, needle",
    [
        (["apply", "model-dir"], "Missing option '-o'"),
        (["no-such-verb"], "No such command 'no-such-verb'"),
        (["apply", "m", "-o", "x", "--op", "halve"], "'halve' is not one of"),
        (["identify", "m", "--k", "many"], "'many' is not a valid integer"),
        (["apply", "m", "-o", "x", "--no-such-flag"], "--no-such-flag"),
        (["apply", "m"], "see 'tnedit apply --help'"),
    ],
)
def test_usage_errors_are_one_line(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expect_clean_failure(
        f"cli: usage {' '.join(args[:2])} {needle[:20]}",
        args,
        capsys,
        watch=[tmp_path],
        verb="(cli guard)",
        needles=[needle],
    )


def test_unexpected_exception_is_one_line_and_debug_keeps_the_traceback(boom_verb, tmp_path, capsys, monkeypatch):
    def body():
        raise RuntimeError("first line\nsecond line")

    boom_verb(body)
    monkeypatch.chdir(tmp_path)
    outcome = expect_clean_failure(
        "cli: unexpected RuntimeError",
        ["boom"],
        capsys,
        watch=[tmp_path],
        verb="(cli guard)",
        needles=["RuntimeError: first line second line", "--debug"],
    )
    assert outcome.exit_code == 2
    with pytest.raises(RuntimeError, match="first line"):
        cli.main(["--debug", "boom"])


def test_os_errors_name_the_file(boom_verb, tmp_path, capsys, monkeypatch):
    target = tmp_path / "full" / "model.safetensors"

    def body():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    boom_verb(body)
    expect_clean_failure(
        "cli: OSError ENOSPC",
        ["boom"],
        capsys,
        watch=[tmp_path],
        verb="(cli guard)",
        needles=[f"{target}: No space left on device"],
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_remove_partial_output_and_exit_130(signum, boom_verb, tmp_path, capsys):
    def body():
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "half.safetensors").write_bytes(b"x" * 100)
            os.kill(os.getpid(), signum)

    boom_verb(body)
    before = signal.getsignal(signum)
    expect_clean_failure(
        f"cli: {signal.Signals(signum).name} mid-write",
        ["boom"],
        capsys,
        watch=[tmp_path],
        verb="(cli guard)",
        code=130,
        needles=[f"interrupted by {signal.Signals(signum).name}", "nothing was written"],
    )
    assert signal.getsignal(signum) is before  # the handler lives for one command only


def test_interrupt_after_a_completed_output_names_it(boom_verb, tmp_path, capsys):
    def body():
        with atomic_directory(tmp_path / "edited") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
        raise KeyboardInterrupt

    boom_verb(body)
    code, _, err = run_cli(["boom"], capsys)
    assert code == 130
    assert err.strip().count("\n") == 0
    assert f"kept the outputs completed before it ({tmp_path / 'edited'})" in err
    assert "nothing was written" not in err


def test_python_warnings_are_one_line_each(boom_verb, tmp_path, capsys):
    def body():
        warnings.warn("a library\nsays something", UserWarning, stacklevel=1)

    boom_verb(body)
    code, _, err = run_cli(["boom"], capsys)
    assert code == 0
    assert err == "tnedit: warning: a library says something\n"
