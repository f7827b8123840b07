"""Errors a user can cause.

Every one of them names the bad value and what would be valid; the CLI turns them into a one-line message
and a non-zero exit code, the server into a 4xx with an OpenAI-style error body. Never a traceback.
"""

from __future__ import annotations


class LeaninferError(Exception):
    """Base class for errors caused by user input (bad reference, bad step, missed quality floor...)."""

    exit_code = 2


class UnknownModelError(LeaninferError):
    pass


class StepError(LeaninferError):
    """A step or recipe that is invalid, incompatible with what came before, or unsupported here."""


class QualityFloorError(LeaninferError):
    """A recipe's quality floor was missed: the artifact is not written."""

    exit_code = 3


class ExportParityError(LeaninferError):
    """An exported model does not compute what the PyTorch model computes."""

    exit_code = 3


def valid_list(values) -> str:
    return ", ".join(sorted(str(v) for v in values))
