"""ONNX → TFLite in one child process: onnx2tf writes the SavedModel, then TFLiteConverter builds the precision asked
for. Run by the TFLite target as ``python -m edgeconv.targets.tflite_job JOB.json`` in onnx2tf's working directory.

One process for both steps imports TensorFlow once, and never into edgeconv's own process; onnx2tf's
process-wide settings (TF_USE_LEGACY_KERAS=1) stay in the child.

JOB.json: ``onnx2tf_args`` (onnx2tf's command line), ``saved_model``, ``precision``, ``io_dtype``, ``calibration``
(an .npz of stacked samples, one key per input, or null), ``output`` (the .tflite to write), ``error`` (where a
TFLiteConverter failure's message goes). Exit 0: done; TFLITE_FAILED: onnx2tf worked and TFLiteConverter did not;
anything else: onnx2tf failed (its own exit code).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TFLITE_FAILED = 70


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    from onnx2tf import main as onnx2tf_main

    sys.argv = ["onnx2tf", *job["onnx2tf_args"]]
    try:
        onnx2tf_main()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            return exc.code if isinstance(exc.code, int) else 1
    saved = Path(job["saved_model"])
    if not (saved / "saved_model.pb").exists():
        return 1

    import numpy as np
    import tensorflow as tf

    from edgeconv.errors import ConversionFailed
    from edgeconv.targets.tflite import tflite_from_saved_model

    samples = None
    if job["calibration"]:
        with np.load(job["calibration"]) as z:
            stacked = {k: z[k] for k in z.files}
        samples = [{k: v[i] for k, v in stacked.items()} for i in range(len(next(iter(stacked.values()))))]
    try:
        data = tflite_from_saved_model(tf, saved, job["precision"], samples, job["io_dtype"], moved=True)
    except ConversionFailed as exc:
        Path(job["error"]).write_text(exc.message)
        return TFLITE_FAILED
    Path(job["output"]).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
