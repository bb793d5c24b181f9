"""The core that host and device share: request, parity, statistics, data, backends, machine facts, execution.

Python 3.6 + numpy only (no dataclasses, no ``from __future__ import annotations``): a bundle carries this package as
one file, ``edgeconv_runner.pyz``, that ``python3 edgeconv_runner.pyz BUNDLE`` runs on a device without edgeconv.
Imports between its modules are relative, so it is the same code as ``edgeconv.core`` here and inside the zipapp.

- ``errors``: the typed errors (and exit codes) host and device share; ``request``: the request and its protocol;
- ``parity``, ``stats``, ``accuracy``: the parity rule, the latency method, accuracy;
- ``data``: the one data loader, reference.npz, batching; ``artifact``: which artifact runs, with which options;
- ``backends``: one module per runtime (ONNX Runtime, LiteRT/Edge TPU, TensorRT); ``machine``: where it was measured;
- ``execute`` (validate), ``sweep`` (profile's batch sizes), ``layers`` (per-layer times); ``cli``: the device's
  command line; ``steps``, ``text``: announcing steps, shortening messages.

See docs/architecture.md.
"""
