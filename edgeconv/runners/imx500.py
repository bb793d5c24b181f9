"""Sony IMX500: the quantized ONNX that MCT wrote for the sensor, run on ONNX Runtime with mct_quantizers' custom ops.

Nothing on a host runs the sensor's ``packerOut.zip``. What the host can run is the model the converter was given: MCT's
ONNX, whose quantizer ops (``mct_quantizers`` domain) ONNX Runtime runs with ``mct_quantizers.get_ort_session_options()``.
mct_quantizers lives in the ``imx500`` toolchain, not in edgeconv's environment, so this runner starts the toolchain's
job (edgeconv/toolchains/jobs/imx500_job.py) serving the session and sends it each feed: simulated quantization on this
host's CPU, not the sensor; its time is ONNX Runtime's on this host, so latency is the device's only
(docs/architecture.md, "NPU toolchains").
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.errors import ArtifactRefused
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec

STORE_DIR = "imx500"
MODEL_FILE = "model_mct.onnx"
INDEX_FILE = "io.json"
SIM_LABEL = "simulated quantization on ONNX Runtime, not the sensor"
LATENCY_NOTE = ("device only: the IMX500 runs packerOut.zip on the camera; this host runs MCT's quantized ONNX on ONNX "
                "Runtime's CPU, whose time says nothing about the sensor")
CALL_TIMEOUT_S = 600
START_TIMEOUT_S = 300


class Imx500Runner(Runner):
    runtime = "imx500"

    def load(self) -> None:
        from edgeconv import toolchains

        index_path = self.artifact.parent / INDEX_FILE
        if not index_path.exists():
            raise ArtifactRefused(f"{self.artifact.name}: {INDEX_FILE} (its inputs and outputs) is missing beside it")
        self.index = json.loads(index_path.read_text())
        self.inputs = [TensorSpec.from_dict(s) for s in self.index["inputs"]]
        self.outputs = [TensorSpec.from_dict(s) for s in self.index["outputs"]]
        key = f"imx500-sim:{self.artifact.resolve()}"
        self.server = toolchains.serving(key)
        if self.server is None:
            tc = toolchains.require("imx500")
            self.server = toolchains.start_job(tc, "imx500_job.py", {"action": "simulate", "onnx": str(self.artifact.resolve())},
                                               workdir=Path(tempfile.mkdtemp(prefix="edgeconv-imx500-sim-")),
                                               timeout=START_TIMEOUT_S, key=key, remove_workdir=True)
        self.versions = self.server.response.get("versions", {})

    def run(self, prepared: Any) -> list[np.ndarray]:
        buf = io.BytesIO()
        np.savez(buf, **{f"in{j}": np.ascontiguousarray(prepared[s.name]) for j, s in enumerate(self.inputs)})
        answer = self.server.call(buf.getvalue(), timeout=CALL_TIMEOUT_S)
        with np.load(io.BytesIO(answer)) as f:
            self.last_s = float(f["seconds"])
            return [f[f"out{j}"] for j in range(len(self.outputs))]

    def info(self) -> dict[str, Any]:
        return {"runtime": "imx500", "version": self.versions.get("imx500-converter"), "device": SIM_LABEL, "threads": None,
                "precision": self.index.get("precision"),
                "note": f"MCT's quantized ONNX on onnxruntime {self.versions.get('onnxruntime')} with mct_quantizers "
                        f"{self.versions.get('mct-quantizers')} in the imx500 toolchain; latency: {LATENCY_NOTE}"}
