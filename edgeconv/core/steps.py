"""Announcing the steps of a run: ``step(label)`` is a context manager around each; edgeconv shows a progress line,
the device runner writes the label to stderr, and without one nothing is shown. See docs/architecture.md."""

import contextlib
import sys


@contextlib.contextmanager
def no_step(label):
    yield


def stderr_step(label):
    sys.stderr.write("%s\n" % label)
    sys.stderr.flush()
    return no_step(label)
