"""ExecuTorch target (PyTorch sources): torch.export → to_edge_transform_and_lower with the XNNPACK partitioner
(or no delegate: the portable kernels) → ``model.pte``. int8 through PT2E quantization with the XNNPACK quantizer
(symmetric, per-channel weights) calibrated on ``--calib``. The ONNX graph still exists for inspection and the
first parity check; the ``.pte`` comes from the PyTorch model itself."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

from edgeconv.core.text import first_line, shorten
from edgeconv.errors import ConversionFailed, PreflightError
from edgeconv.lazy import require, version_of
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions

BACKENDS = ("xnnpack", "portable")


class ExecuTorchTarget(Target):
    name = "executorch"
    precisions = ("fp32", "int8")
    dynamic_batch = False
    needs_calibration = ("int8",)

    def check_options(self, profile, opts: TargetOptions) -> None:
        super().check_options(profile, opts)
        backend = opts.extra.get("et_backend") or "xnnpack"
        if backend not in BACKENDS:
            raise PreflightError(f"--et-backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if opts.precision == "int8" and backend == "portable":
            raise PreflightError("int8 ExecuTorch programs run their quantized ops through XNNPACK; use --et-backend xnnpack")

    def check_source(self, source) -> None:
        if source.framework != "torch":
            raise PreflightError(
                f"ExecuTorch programs are built from a PyTorch model by torch.export; {source.path} is "
                f"{ {'onnx': 'an ONNX', 'keras': 'a Keras'}.get(source.framework, source.framework)} model ({source.format}), "
                "which ExecuTorch cannot take",
                hint="give the PyTorch model it came from (.pt2, or a state_dict with --model-class), or pick a target that "
                     "takes " + ("ONNX: onnx, tflite, openvino, ncnn" if source.framework == "onnx"
                                 else "it: tflite, onnx, openvino"))
        if getattr(source, "module", None) is None or source.format == "torchscript":
            raise PreflightError(
                f"ExecuTorch programs are built by torch.export, which cannot trace a TorchScript module ({source.path})",
                hint="save the original nn.Module with torch.export.save(torch.export.export(model, args), 'model.pt2'), "
                     "or pick another target (onnx, tflite, openvino, ncnn take TorchScript)")

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        source = ctx.source_model
        torch = require("torch", why="for ExecuTorch")
        require("executorch", why="for the ExecuTorch target (pip install 'edgeconv[executorch]')")
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import to_edge_transform_and_lower

        backend = opts.extra.get("et_backend") or "xnnpack"
        feed = ctx.reference_inputs
        names = list(ctx.input_shapes)
        args, kwargs = source.call_args({n: feed[n][:1].copy() for n in names})  # a .pt2's keyword inputs by keyword
        module = source.module
        log = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(log):
                warnings.simplefilter("ignore")
                quant: dict[str, Any] | None = None
                if opts.precision == "int8":
                    module, quant = self._quantize(torch, module, args, kwargs, source, ctx)
                program = torch.export.export(module, args, kwargs=kwargs or None)
                partitioners = []
                if backend == "xnnpack":
                    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

                    partitioners = [XnnpackPartitioner()]
                edge = to_edge_transform_and_lower(program, partitioner=partitioners)
                info = get_delegation_info(edge.exported_program().graph_module)
                buffer = edge.to_executorch().buffer
        except PreflightError:
            raise
        except Exception as exc:
            raise ConversionFailed(f"ExecuTorch {version_of('executorch')} lowering failed: {type(exc).__name__}: "
                                   f"{first_line(str(exc), 300)}", details=shorten(log.getvalue(), 2000, keep="tail")) from exc
        dest = workdir / "model.pte"
        dest.write_bytes(buffer)
        ops = info.get_operator_delegation_dataframe() if hasattr(info, "get_operator_delegation_dataframe") else None
        delegation = {"backend": backend, "delegated_subgraphs": int(info.num_delegated_subgraphs),
                      "delegated_nodes": int(info.num_delegated_nodes), "non_delegated_nodes": int(info.num_non_delegated_nodes),
                      "per_op": ops.to_dict(orient="records") if ops is not None else None}
        runner_options = {"input_names": names, "input_dtypes": [str(feed[n].dtype) for n in names]}
        extra = {"converter": f"executorch {version_of('executorch')} to_edge_transform_and_lower ({backend})",
                 "delegation": delegation, "quantization": quant, "runner_options": runner_options}
        return Conversion([Artifact(onnx_path.name, "canonical-onnx", "fp32"),
                           Artifact(dest.name, "model", opts.precision, profile.runner, extra)])

    @staticmethod
    def _quantize(torch, module, args, kwargs, source, ctx: TargetContext):
        try:
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        except ImportError:  # older torch keeps PT2E in torch.ao
            from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(module, args, kwargs=kwargs or None).module(), quantizer)
        samples = ctx.calibration
        with torch.no_grad():
            for s in samples:
                a, kw = source.call_args(s)
                prepared(*a, **kw)
        return convert_pt2e(prepared), {"method": "PT2E (XNNPACKQuantizer, symmetric, per-channel weights)",
                                        "samples": len(samples)}
