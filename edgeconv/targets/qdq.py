"""Static Q/DQ quantization with ONNX Runtime's quantizer, shared by the onnx and jetson targets: calibration on the
user's samples with the method the int8 guard asks for (``QuantSettings.calibration``), 8- or 16-bit activations,
int8 per-channel weights, and the guard's float layers left without Q/DQ (``nodes_to_exclude``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgeconv.core.text import first_line
from edgeconv.errors import ConversionFailed
from edgeconv.targets.base import QuantSettings

# onnxruntime.quantization.CalibrationMethod members, the default first; percentile clips at CalibPercentile. (Its
# "Distribution" method is for float8 and gives unusable int8 ranges: not offered.)
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
PERCENTILE = 99.999
# what quantize_static says on the root logger that is advice for other pipelines, not news for this one
_QUIET = ("pre-processing before quantization", "do not support 16-bit/4-bit integer quantization types prior to opset 21",
          "does not support 16-bit integer quantization natively")


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(q in str(record.msg) for q in _QUIET)


def quantize_qdq(src: Path, dest: Path, samples: list, *, exclude: list[str], settings: QuantSettings,
                 symmetric_activations: bool, extra_options: dict[str, Any] | None = None,
                 reuse_dir: Path | None = None) -> dict[str, Any]:
    """Write the Q/DQ graph of ``src`` to ``dest``; return what was done, for the manifest. ``reuse_dir``: where the
    calibration ranges of each method are kept for the next conversion of the same graph and samples (the int8
    guard's attempts differ only in what they leave in float, so they calibrate once per method)."""
    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

    method = settings.calibration or "minmax"
    if method not in CALIBRATION_METHODS:
        raise ConversionFailed(f"unknown calibration method {method!r} (ONNX Runtime has {', '.join(CALIBRATION_METHODS)})")
    options = dict(extra_options or {})
    if method == "percentile":
        options["CalibPercentile"] = PERCENTILE
    wide = settings.activations == "int16"
    activation_type = {(False, False): QuantType.QUInt8, (False, True): QuantType.QInt8,
                       (True, False): QuantType.QUInt16, (True, True): QuantType.QInt16}[(wide, symmetric_activations)]
    cache = None
    if reuse_dir is not None:
        reuse_dir.mkdir(parents=True, exist_ok=True)
        cache = reuse_dir / f"ort-ranges-{method}-{'symmetric' if symmetric_activations else 'asymmetric'}.json"
    present = {n.name for n in onnx.load(str(src), load_external_data=False).graph.node}
    exclude = [n for n in exclude if n in present]
    quiet = _Quiet()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(str(src), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=activation_type, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                        extra_options=options or None, nodes_to_exclude=exclude or None,
                        calibration_cache_path=str(cache) if cache else None)
    except Exception as exc:
        raise ConversionFailed(f"Q/DQ quantization failed: {type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        logging.getLogger().removeFilter(quiet)
    return {"tool": f"onnxruntime.quantization {ort_version} quantize_static (QDQ)",
            "activations": f"{'u' if not symmetric_activations else ''}int{16 if wide else 8}, "
                           f"{'symmetric' if symmetric_activations else 'asymmetric'}, per tensor",
            "weights": "int8, symmetric, per channel", "calibration_method": CALIBRATION_METHODS[method],
            **({"calibration_percentile": PERCENTILE} if method == "percentile" else {}),
            "samples": len(samples), "nodes_to_exclude": exclude, **({"options": options} if options else {})}
