"""One exception tree for prefect-hpo.

Every error the package raises on purpose derives from :class:`PrefectHPOError`, so callers can
catch "anything prefect-hpo refused" in one place, and each domain error also subclasses the
builtin it refines (``ValueError``, ``KeyError``, ...) so generic handlers keep working.
"""

from __future__ import annotations


class PrefectHPOError(Exception):
    """Root of every error raised deliberately by prefect-hpo."""


class SearchSpaceError(PrefectHPOError, ValueError):
    """A search space, parameter or parameter constraint is malformed.

    The message always names the offending parameter (or constraint) and what is wrong with it.
    """


class SpecError(PrefectHPOError, ValueError):
    """An experiment specification (objectives, algorithm, options) is invalid."""


class TrialError(PrefectHPOError, ValueError):
    """An operation on a trial is not allowed in its current state (told twice, bad values...)."""


class UnknownTrialError(TrialError, KeyError):
    """A trial index that the experiment never handed out."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class NoCompletedTrialsError(PrefectHPOError, LookupError):
    """A question (best trial, ...) that needs at least one completed trial."""


class SerializationError(PrefectHPOError, ValueError):
    """A saved experiment document cannot be read back (corrupt, wrong version, ...)."""


class StorageError(PrefectHPOError, OSError):
    """A checkpoint store or tracking backend failed; wraps boto3/MLflow/OS errors."""


class SearchSpaceExhaustedError(PrefectHPOError, LookupError):
    """Every point of a finite search space (or grid) has already been suggested."""


class CorruptCheckpointError(SerializationError):
    """A checkpoint exists but cannot be read; it is left untouched so nothing is lost."""


class ExperimentNotFoundError(PrefectHPOError, LookupError):
    """No checkpoint (and no MLflow record) exists for the named experiment."""


class TenantError(PrefectHPOError, PermissionError):
    """An experiment of one tenant was asked for by another (or by a caller with no tenant)."""


class LeaseHeldError(PrefectHPOError, RuntimeError):
    """Another flow is driving this experiment; two drivers would launch trials twice."""


class LeaseLostError(LeaseHeldError):
    """This flow's lease expired and another driver took the experiment over."""
