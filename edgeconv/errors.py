"""Typed errors. Library code raises these; only the CLI maps them to a message and an exit code.

Exit codes (DESIGN.md): 0 ok · 1 a check or budget failed · 2 bad usage or bad input (incl. preflight
refusals) · 3 missing dependency, device or unsupported platform · 4 conversion failed.
"""

from __future__ import annotations


class EdgeconvError(Exception):
    """Base of every error edgeconv raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Long text (a table, a condensed tool log) shown under the message.
        self.details = details

    def __str__(self) -> str:
        return self.message


class CheckFailed(EdgeconvError):
    """A check or a budget was missed (parity at validate time, accuracy drop, latency budget)."""

    exit_code = 1


class BadInput(EdgeconvError):
    """The user gave something edgeconv cannot use: a missing file, a corrupt model, wrong data."""

    exit_code = 2


class PreflightError(BadInput):
    """A target refuses a model or an option before any conversion work starts."""


class MissingDependency(EdgeconvError):
    """An optional library, tool, device or platform is not available here."""

    exit_code = 3


class ConversionFailed(EdgeconvError):
    """An exporter or converter failed, or its result does not compute what the source computes."""

    exit_code = 4
