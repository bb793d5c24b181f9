"""ONNX sources: ``.onnx``, with or without external data.

The reference runtime is ONNX Runtime; when it refuses the graph (files from old exporters: opset 6's AveragePool-1 and
BatchNormalization-6 have no kernel in today's ONNX Runtime), onnx's reference evaluator (``onnx.reference``, every
opset version of every op in numpy) runs it, and the canonical step's upgraded graph is checked against its outputs.
The manifest's ``reference.runtime`` says which one ran (see docs/architecture.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeconv.core.text import first_line
from edgeconv.errors import BadInput
from edgeconv.frontends.base import ExportRecord, LoadOptions, SourceModel
from edgeconv.lazy import version_of
from edgeconv.onnx_tools import TWO_GB, io_specs, load_onnx, opset_of
from edgeconv.shapes import open_written_dims
from edgeconv.specs import TensorSpec


class OnnxSource(SourceModel):
    framework = "onnx"
    format = "onnx"
    frontend = "OnnxFromOnnx"
    layout_default = "NCHW"

    def __init__(self, path: Path, options: LoadOptions):
        super().__init__(path)
        self.proto = load_onnx(path)
        # -1/0 written for a dynamic dim (paddle2onnx, old TF exporters) → named dims; ONNX Runtime refuses a 0 as written,
        # so the reference runs the graph with them named (same nodes and weights)
        opened = open_written_dims(self.proto)
        self.notes += opened
        self._runs_proto = bool(opened) and self.proto.ByteSize() <= TWO_GB
        self.inputs, self.outputs = io_specs(self.proto, self.layout_default)
        self.default_opset = opset_of(self.proto)
        self._reference: tuple[Callable, str, str | None] | None = None  # run, runtime, why not ONNX Runtime

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._runner()[0]({s.name: feed[s.name] for s in self.inputs})

    @property
    def reference_runtime(self) -> str:
        """``"onnxruntime"``, or ``"onnx.reference"`` when ONNX Runtime refuses the graph."""
        return self._runner()[1]

    @property
    def reference_note(self) -> str | None:
        """Why the reference is not ONNX Runtime's (None when it is)."""
        return self._runner()[2]

    def _runner(self) -> tuple[Callable, str, str | None]:
        if self._reference is None:
            model = self.proto.SerializeToString() if self._runs_proto else str(self.path)
            self._reference = reference_runner(self.path, model, self.proto)
        return self._reference

    def export_onnx(self, dest: Path, *, inputs: list[TensorSpec], opset: int | None, dynamic_batch: bool) -> ExportRecord:
        import onnx

        from edgeconv.onnx_tools import set_input_shapes

        have = opset_of(self.proto)
        if opset and opset != have:
            from onnx import version_converter

            try:
                proto = version_converter.convert_version(self.proto, opset)
            except Exception as exc:
                raise BadInput(f"cannot convert {self.path} from opset {have} to {opset}: {exc}") from exc
        else:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.proto)
        set_input_shapes(proto, inputs, dynamic_batch)
        big = proto.ByteSize() > TWO_GB
        onnx.save(proto, str(dest), save_as_external_data=big, location=dest.name + ".data" if big else None)
        return ExportRecord(exporter=f"onnx {onnx.__version__} (copy)", opset=opset or have)

    def versions(self) -> dict[str, str | None]:
        return {"onnxruntime": version_of("onnxruntime")}


def reference_runner(path: Path, model: str | bytes, proto) -> tuple[Callable, str, str | None]:
    """``(run(feed) → outputs, runtime, note)``: an ONNX Runtime session on ``model`` (a path or the serialized graph);
    when ONNX Runtime refuses it, onnx's reference evaluator on ``proto``, with a note saying why. A graph neither can
    run is the user's bad input, with both reasons."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        return (lambda feed: session.run(None, feed)), "onnxruntime", None
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises a bare Exception subclass per status; the reason is kept
        refused = f"ONNX Runtime {ort.__version__}: " + re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", first_line(str(exc)))
    from onnx.reference import ReferenceEvaluator

    def neither(exc: Exception) -> BadInput:
        return BadInput(f"neither ONNX Runtime nor onnx's reference evaluator can run {path}: {refused}; onnx.reference: "
                        f"{type(exc).__name__}: {first_line(str(exc))}",
                        hint="check that the file loads in the tool that wrote it; re-export it at a newer opset")

    try:
        evaluator = ReferenceEvaluator(proto)
    except Exception as exc:  # an op it has no implementation for (custom domains), a malformed node
        raise neither(exc) from exc

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return [np.asarray(o) for o in evaluator.run(None, feed)]
        except Exception as exc:
            raise neither(exc) from exc

    opset = opset_of(proto)
    note = (f"reference outputs from onnx.reference (onnx {version_of('onnx')}), the canonical graph (upgraded from opset "
            f"{opset}) checked against them: {refused}")
    return run, "onnx.reference", note
