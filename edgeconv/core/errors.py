"""The errors edgeconv raises on purpose, one class per kind, shared by the host and the device runner.

Library code raises these; only a command line maps them to a message and an exit code (edgeconv's CLI on the host,
:func:`edgeconv.core.cli.main` on a device). Exit codes: 0 ok · 1 a check or budget failed · 2 bad usage or bad input
(incl. preflight refusals and damaged bundles) · 3 missing dependency, runtime, device or unsupported platform ·
4 conversion failed · 5 internal error. The host-only kinds (a conversion that failed, a preflight refusal …) are
in ``edgeconv/errors.py``. See docs/architecture.md.
"""

EXIT_OK, EXIT_CHECK, EXIT_BAD_INPUT, EXIT_MISSING = 0, 1, 2, 3


class EdgeconvError(Exception):
    """Base of every error edgeconv raises on purpose. ``exit_code`` is what the command line exits with; ``hint``
    says what to do; ``details`` is long text (a table, a condensed tool log) shown under the message."""

    exit_code = EXIT_CHECK

    def __init__(self, message, *, hint=None, details=None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self):
        return self.message


class BadInput(EdgeconvError):
    """The user gave something edgeconv cannot use: a missing file, a corrupt model, wrong data, an option the
    runtime does not take (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class ArtifactRefused(BadInput):
    """A runtime cannot load or run a model file. A file the user handed to validate or profile is bad input (2);
    one that a conversion has just written is that conversion's failure: convert reports it as ConversionFailed (4)."""


class NoLayerProfiler(BadInput):
    """The runtime gives no per-layer times (exit 2): ``--layers`` cannot be honoured for this bundle here."""


class UnknownProtocol(BadInput):
    """A request made for a protocol this runner does not speak (exit 2): a newer edgeconv made it."""


class MissingDependency(EdgeconvError):
    """An optional library, runtime, tool, device or platform is not available here (exit 3)."""

    exit_code = EXIT_MISSING


class CheckFailed(EdgeconvError):
    """A check or a budget was missed (parity at validate time, accuracy drop, latency budget, a QNN graph with a node
    on the CPU EP)."""

    exit_code = EXIT_CHECK
