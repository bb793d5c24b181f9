"""Where LiteRT's int8 speed-up over fp32 comes from on this CPU, per kind of layer of the MobileNetV2-sized model.

Every convolution of the Keras MobileNetV2 (stem 3x3, depthwise 3x3, pointwise 1x1) becomes a one-layer model with
its own weights and input shape, converted to fp32 and to full int8 (int8 I/O, so no quantize/dequantize op is
timed), and timed at 2 threads with the same LiteRT interpreter and XNNPACK as `validate`, fp32 and int8 interleaved.
The sums per kind show which layers int8 speeds up and which it slows down; the whole model's ratio, measured in
the same run, is the check that the layers add up to the model.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mobilenet, write_result  # noqa: E402
from tflite_bench import latency  # noqa: E402

THREADS = 2
ROUNDS = 5
RUNS = 30


def kind(layer) -> str | None:
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise 3x3"
    if isinstance(layer, keras.layers.Conv2D):
        return "pointwise 1x1" if tuple(layer.kernel_size) == (1, 1) else "stem 3x3"
    return None


def one_layer_tflite(layer, int8: bool) -> bytes:
    import keras
    import tensorflow as tf

    shape = tuple(layer.input.shape[1:])
    cfg = {**layer.get_config(), "name": "layer", "activation": "relu6"}  # ReLU6 fuses into the conv, as in the model
    x = keras.Input(shape, batch_size=1)
    clone = layer.__class__.from_config(cfg)
    model = keras.Model(x, clone(x))
    clone.set_weights(layer.get_weights())
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, *shape)).astype(np.float32)] for _ in range(8))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


def interpreter(content: bytes):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=THREADS)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    return it


def p50_ms(it, runs: int = RUNS) -> float:
    for _ in range(3):
        it.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.invoke()
        times.append(time.perf_counter() - t0)
    return sorted(times)[runs // 2] * 1e3


def main() -> dict:
    import keras

    model = keras.models.load_model(mobilenet(".keras"))
    layers = [(kind(layer), layer) for layer in model.layers if kind(layer)]
    pairs = [(k, layer.name, interpreter(one_layer_tflite(layer, False)), interpreter(one_layer_tflite(layer, True)))
             for k, layer in layers]
    per_layer = {name: {"kind": k, "fp32_ms": [], "int8_ms": []} for k, name, _, _ in pairs}
    for r in range(ROUNDS):
        for _, name, f32, i8 in pairs:
            first, second = ((f32, "fp32_ms"), (i8, "int8_ms")) if r % 2 == 0 else ((i8, "int8_ms"), (f32, "fp32_ms"))
            per_layer[name][first[1]].append(p50_ms(first[0]))
            per_layer[name][second[1]].append(p50_ms(second[0]))
    kinds: dict[str, dict] = {}
    for row in per_layer.values():
        for key in ("fp32_ms", "int8_ms"):
            row[key] = float(np.median(row[key]))
        k = kinds.setdefault(row["kind"], {"layers": 0, "fp32_ms": 0.0, "int8_ms": 0.0})
        k["layers"] += 1
        k["fp32_ms"] += row["fp32_ms"]
        k["int8_ms"] += row["int8_ms"]
    total32 = sum(k["fp32_ms"] for k in kinds.values())
    for k in kinds.values():
        k["int8_speedup"] = k["fp32_ms"] / k["int8_ms"]
        k["share_of_fp32_time"] = k["fp32_ms"] / total32
    total8 = sum(k["int8_ms"] for k in kinds.values())
    whole = latency(rounds=6)
    result = {
        "method": f"one-layer models cut from the Keras MobileNetV2-sized model (own weights and shapes), fp32 vs full int8 "
                  f"with int8 I/O, LiteRT {THREADS} threads (XNNPACK), {ROUNDS} interleaved rounds of {RUNS} runs, median "
                  f"of the per-round p50s per layer, summed per kind",
        "per_kind": kinds,
        "sum_of_layers": {"fp32_ms": total32, "int8_ms": total8, "int8_speedup": total32 / total8},
        "whole_model": {"int8_speedup": whole["speedup_median_of_rounds"], "fp32_p50_ms": whole["fp32"]["p50_ms"],
                        "int8_p50_ms": whole["int8"]["p50_ms"], "method": "tflite_bench.latency, 6 rounds"},
        "per_layer": per_layer,
    }
    write_result("tflite_layers", result)
    return result


if __name__ == "__main__":
    main()
