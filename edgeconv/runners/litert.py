"""LiteRT (TFLite) runner: ai-edge-litert's Interpreter, XNNPACK on (LiteRT's default CPU path).

It speaks the source model's terms: tensors by the manifest's names, in the source layout (the artifact's
NHWC tensors are transposed back and forth), float in and out (int8/uint8 tensors are quantized and
dequantized with their own scale and zero point). Latency is the time of ``invoke()``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.errors import BadInput
from edgeconv.lazy import require, version_of
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec


def _interpreter_class():
    return require("ai_edge_litert.interpreter", why="to run TFLite models (pip install ai-edge-litert)").Interpreter


def signature_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of the default signature: name, shape, dtype, tensor index, quantization."""
    interp = _interpreter_class()(model_path=str(path))
    sig = interp.get_signature_runner()

    def rows(details: dict) -> list[dict[str, Any]]:
        return [{"name": k, "shape": [int(d) for d in v["shape"]], "dtype": np.dtype(v["dtype"]).name, "index": int(v["index"]),
                 "quantization": tuple(float(q) for q in v["quantization"])} for k, v in details.items()]

    return rows(sig.get_input_details()), rows(sig.get_output_details())


def _inverse(perm: list[int]) -> list[int]:
    return list(np.argsort(perm))


class LiteRtRunner(Runner):
    runtime = "litert"
    accepted_options = ("tensor_names", "permutations", "io_layout")

    def load(self) -> None:
        Interpreter = _interpreter_class()
        try:
            self.interp = Interpreter(model_path=str(self.artifact), num_threads=self.threads)
            self.interp.allocate_tensors()
        except Exception as exc:
            raise BadInput(f"LiteRT cannot load {self.artifact}: {exc}") from exc
        ins, outs = signature_io(self.artifact)
        names = self.options.get("tensor_names") or {d["name"]: d["name"] for d in ins + outs}
        perms = self.options.get("permutations") or {}
        self.io_layout = self.options.get("io_layout", "source")
        if self.io_layout not in ("source", "artifact"):
            raise BadInput(f"--io-layout must be source or artifact, not {self.io_layout!r}")
        by_sig = {d["name"]: d for d in ins + outs}
        sig_ins = {d["name"] for d in ins}
        self._in, self._out = [], []
        for public, sig_name in names.items():
            d = by_sig[sig_name]
            perm = perms.get(public) if self.io_layout == "source" else None
            shape = d["shape"] if perm is None else [d["shape"][i] for i in _inverse(perm)]
            entry = {**d, "public": public, "perm": perm, "public_shape": shape}
            (self._in if sig_name in sig_ins else self._out).append(entry)
        self.inputs = [TensorSpec(e["public"], e["public_shape"], "float32" if e["quantization"][0] else e["dtype"]) for e in self._in]
        self.outputs = [TensorSpec(e["public"], e["public_shape"], "float32" if e["quantization"][0] else e["dtype"]) for e in self._out]

    def prepare(self, feed: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
        prepared = []
        for e in self._in:
            if e["public"] not in feed:
                raise BadInput(f"no data for input {e['public']!r}")
            x = np.asarray(feed[e["public"]])
            if e["perm"] is not None:
                x = x.transpose(e["perm"])
            scale, zero = e["quantization"]
            if scale:
                info = np.iinfo(np.dtype(e["dtype"]))
                x = np.clip(np.round(x / scale + zero), info.min, info.max)
            x = np.ascontiguousarray(x, dtype=np.dtype(e["dtype"]))
            if list(x.shape) != list(self.interp.get_tensor_details()[e["index"]]["shape"]):
                self.interp.resize_tensor_input(e["index"], list(x.shape))  # another batch size
                self.interp.allocate_tensors()
            prepared.append((e["index"], x))
        return prepared

    def run_prepared(self, prepared: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        for index, x in prepared:
            self.interp.set_tensor(index, x)
        t0 = time.perf_counter()
        self.interp.invoke()
        self.last_inference_s = time.perf_counter() - t0
        outs = []
        for e in self._out:
            y = self.interp.get_tensor(e["index"])
            scale, zero = e["quantization"]
            if scale:
                y = (y.astype(np.float32) - zero) * scale
            if e["perm"] is not None:
                y = y.transpose(_inverse(e["perm"]))
            outs.append(np.array(y, copy=True))
        return outs

    def fixed_batch(self) -> int | None:
        return self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None

    def info(self) -> dict[str, Any]:
        return {
            "runtime": "litert",
            "version": version_of("ai-edge-litert"),
            "device": "CPU",
            "threads": self.threads or "default",
            "delegate": "XNNPACK (LiteRT default for CPU)",
            "precision": ", ".join(sorted({e["dtype"] for e in self._in + self._out})) + " I/O tensors",
            "io_layout": self.io_layout,
        }
