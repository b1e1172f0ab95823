"""One exception family, so the CLI can turn any expected failure into one clear line.

Builtin bases are mixed in where library callers expect them (PEFT's ``NoMatchingPeftModuleError(PeftError,
ValueError)``): ``except ValueError`` keeps catching a malformed neuron set or an unknown architecture. The CLI
catches :class:`TneditError` alone and exits with its ``exit_code``.
"""

from __future__ import annotations


class TneditWarning(UserWarning):
    """A recoverable oddity a library user may filter (``warnings.simplefilter("error", TneditWarning)``)."""


class TneditError(Exception):
    """A failure caused by the user's input or environment, reported without a traceback."""

    exit_code = 2


class InputError(TneditError):
    """A file, option or value that tnedit cannot use as given."""


class CheckpointError(InputError):
    """A model directory that is missing, malformed, quantized or otherwise unusable."""


class NeuronSetError(InputError, ValueError):
    """A neurons file or neuron list that is malformed or does not fit the model (a ValueError for library callers)."""


class UnsupportedArchitectureError(InputError, ValueError):
    """A model_type that the architecture registry does not cover, or a config it cannot read."""


class CorpusError(InputError):
    """Parallel sentences that are missing, misaligned or unusable."""


class RecipeError(InputError):
    """A recipe file that does not validate."""


class ReportError(InputError, ValueError):
    """A report dict or report.json that is not a valid ``tnedit.report/1`` (a ValueError for library callers)."""


class LibraryUsageError(TneditError, RuntimeError):
    """A library API called out of order (a RuntimeError for library callers); the CLI never triggers it."""


class HubError(TneditError):
    """A Hub upload that failed: authentication, network or checksum."""


class TuneError(TneditError):
    """A tune search that found no neuron set within the bound on its validation split (the inputs were fine)."""

    exit_code = 1


class NonFiniteEditError(InputError):
    """A scaling factor whose result does not fit the weights' dtype (it would write inf or NaN)."""


class DistributedRunError(TneditError):
    """A data-parallel run whose ranks could not join or lost one another (a rank died or stopped answering)."""

    exit_code = 1
