"""What every backend is: one runtime behind ``inputs``/``outputs`` (name, shape, dtype), ``prepare(feed)`` once,
``run(prepared)`` timed into ``last_s``, ``info()``, ``fixed_batch()``, ``close()``. edgeconv's runners on the host
have the same shape, so the one ``execute`` drives both. See docs/architecture.md."""

import numpy as np

from ..errors import BadInput


class Backend(object):
    """The shape every runtime has here (see the module's docstring)."""

    inputs = []
    resizes_batch = False  # the runtime re-plans an artifact with a fixed batch for another batch size

    def fixed_batch(self):
        """The batch every call must have, or None when the first axis is dynamic."""
        shape = self.inputs[0]["shape"] if self.inputs else None
        return shape[0] if shape else None

    def close(self):
        """Release what the runtime holds (device memory); nothing for most runtimes."""


def inverse_perm(perm):
    return [int(i) for i in np.argsort(perm)]


def check_options(runtime, accepted, options):
    """Refuse, never ignore, a runtime option this runtime does not take."""
    unknown = sorted(set(k for k, v in options.items() if v is not None) - set(accepted))
    if unknown:
        names = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise BadInput("%s does not apply to the %s runner%s" % (
            names, runtime, " (it takes %s)" % ", ".join(accepted) if accepted else ""))


def missing_inputs(entries, feed):
    """Refuse a feed that lacks one of the model's inputs, naming them."""
    missing = [e["name"] for e in entries if e["name"] not in feed]
    if missing:
        raise BadInput("no data for input(s) %s; the model's inputs are %s" % (missing, [e["name"] for e in entries]))
