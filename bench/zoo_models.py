"""The zoo's corpus: one small builder per model, in the file formats users hand over, and the registry table.

Every model has random weights (no hub download, ever): timm/torchvision with ``pretrained=False`` /
``weights=None``, ``keras.applications`` with ``weights=None``, Hugging Face ``transformers`` built from small
configs. A builder writes into its own folder the model file (or SavedModel directory), a reference sample
(``.npy`` for one input, ``.npz`` keyed by input name otherwise) and, for image CNN classifiers, a calibration
set and a labelled set whose labels are the source model's own argmax (the source scores 100% top-1, so the
drop measures the artifact). It returns a :class:`Built` saying which file is which and what else a user would
type (``--model-class``/``--model-kwargs`` for a state_dict). No builder knows about edgeconv's internals.

Heavy imports (torch, tensorflow, timm, transformers, onnx) happen inside the builders.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CALIB_N = 32  # calibration samples for int8 targets
DATA_N = 32  # labelled samples for --data
TOKENS = 16  # sequence length of text models
AUDIO = 16000  # samples of a 1 s, 16 kHz waveform
VOCAB = 1000


@dataclass(frozen=True)
class Built:
    """What a builder wrote, relative to its folder."""

    model: str
    sample: str
    calib: str | None = None
    data: str | None = None
    args: tuple[str, ...] = ()  # extra convert arguments a user would pass (model class of a state_dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "sample": self.sample, "calib": self.calib, "data": self.data, "args": list(self.args)}

    @classmethod
    def from_dict(cls, d: dict) -> Built:
        return cls(d["model"], d["sample"], d.get("calib"), d.get("data"), tuple(d.get("args", ())))


@dataclass(frozen=True)
class ZooModel:
    name: str
    kind: str  # cnn (image classifier), seg, video, vit, text, audio, recurrent, mlp
    fmt: str  # torchscript, pt2, state_dict, onnx, keras, h5, savedmodel
    build: Callable[[Path], Built] = field(repr=False)
    inputs: str  # input spec, for people
    origin: str  # where the architecture comes from
    fast: bool = False  # in tests/test_zoo_fast.py and `zoo.py --fast`

    @property
    def image_cnn(self) -> bool:
        """CNNs on images go to the int8-only NPU targets (coral, ethos-u)."""
        return self.kind in ("cnn", "seg")


# ---------------------------------------------------------------------------------------------------------
# shared helpers


CLASSES = Path(__file__).resolve().parent / "zoo_classes.py"  # the state_dict models' model.py


def vision_libs(required: bool = True) -> None:
    """The torchvision import fix (see zoo_classes.py); MissingLibrary when ``required`` and it is not installed."""
    from zoo_classes import vision_libs as fix

    fix(required)


def _save_feed(out: Path, stem: str, feed: dict[str, np.ndarray]) -> str:
    """One input: ``STEM.npy``; several: ``STEM.npz`` keyed by input name (as users keep them)."""
    if len(feed) == 1:
        np.save(out / f"{stem}.npy", next(iter(feed.values())))
        return f"{stem}.npy"
    np.savez(out / f"{stem}.npz", **feed)
    return f"{stem}.npz"


def _images(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape[1:])).astype(np.float32)


def _tokens(n: int, seed: int, vocab: int = VOCAB) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(n, TOKENS), dtype=np.int64)
    mask = np.ones((n, TOKENS), dtype=np.int64)
    mask[:, -3:] = 0  # a padded tail, as a tokenizer writes it
    return {"input_ids": ids, "attention_mask": mask}


def _first(out):
    """The first tensor of a model's output (tensor, tuple, dict or ModelOutput)."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return _first(out[0])
    return out


def _classifier_files(out: Path, predict: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...]) -> tuple[str, str]:
    """calib.npy (CALIB_N inputs) and test.npz (x, y = the source's own argmax)."""
    calib = _images(shape, CALIB_N, seed=1)
    np.save(out / "calib.npy", calib)
    x = _images(shape, DATA_N, seed=2)
    y = np.concatenate([predict(x[i : i + 8]) for i in range(0, DATA_N, 8)]).argmax(axis=1).astype(np.int64)
    np.savez(out / "test.npz", x=x, y=y)
    return "calib.npy", "test.npz"


def _torch_predict(module) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return _first(module(torch.from_numpy(x))).numpy()

    return predict


# ---------------------------------------------------------------------------------------------------------
# PyTorch: one module, written as TorchScript (plain trace, no edgeconv spec), .pt2, or state_dict (+ class)


def _torch_files(out: Path, module, feed: dict[str, np.ndarray], fmt: str, *, classifier: bool = False,
                 calib: bool = False, model_class: str | None = None, model_kwargs: dict | None = None) -> Built:
    import torch

    module = module.eval()
    args = tuple(torch.from_numpy(v) for v in feed.values())
    extra: tuple[str, ...] = ()
    if fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(module, args, strict=False, check_trace=False).save(str(out / "model.pt"))
        model = "model.pt"
    elif fmt == "pt2":
        torch.export.save(torch.export.export(module, args), str(out / "model.pt2"))
        model = "model.pt2"
    elif fmt == "state_dict":
        torch.save(module.state_dict(), out / "weights.pt")
        model = "weights.pt"
        extra = ("--model-class", model_class or "", "--model-kwargs", json.dumps(model_kwargs or {}))
    else:
        raise ValueError(fmt)
    sample = _save_feed(out, "sample", {k: v[:1] for k, v in feed.items()})
    c = d = None
    if classifier:
        c, d = _classifier_files(out, _torch_predict(module), next(iter(feed.values())).shape)
    elif calib:
        np.save(out / "calib.npy", _images(next(iter(feed.values())).shape, CALIB_N, seed=1))
        c = "calib.npy"
    return Built(model, sample, c, d, extra)


def _timm(name: str, fmt: str, size: int = 96, **kw) -> Callable[[Path], Built]:
    def build(out: Path) -> Built:
        import torch
        from zoo_classes import TimmClassifier, timm_lib

        timm = timm_lib()
        torch.manual_seed(0)
        feed = {"x": _images((1, 3, size, size), 1, seed=0)}
        if fmt == "state_dict":  # the user's model.py wraps the timm architecture (bench/zoo_classes.py)
            kwargs = {"name": name, "num_classes": 10, **kw}
            return _torch_files(out, TimmClassifier(**kwargs), feed, fmt, classifier=True,
                                model_class=f"{CLASSES}:TimmClassifier", model_kwargs=kwargs)
        m = timm.create_model(name, pretrained=False, num_classes=10, **kw)
        return _torch_files(out, m, feed, fmt, classifier=True)

    return build


def _tv(name: str, fmt: str, size: int = 96, kind: str = "cnn", **kw) -> Callable[[Path], Built]:
    def build(out: Path) -> Built:
        vision_libs()
        import torch
        import torchvision

        torch.manual_seed(0)
        shape = (1, 3, 4, size, size) if kind == "video" else (1, 3, size, size)
        feed = {"x": _images(shape, 1, seed=0)}
        if fmt == "state_dict":  # the user's model.py wraps the torchvision architecture (bench/zoo_classes.py)
            from zoo_classes import TorchvisionClassifier

            kwargs = {"name": name, **kw}
            return _torch_files(out, TorchvisionClassifier(**kwargs), feed, fmt, classifier=True,
                                model_class=f"{CLASSES}:TorchvisionClassifier", model_kwargs=kwargs)
        m = getattr(torchvision.models if kind == "cnn" else getattr(torchvision.models, kind), name)(weights=None, **kw)
        return _torch_files(out, m, feed, fmt, classifier=kind in ("cnn", "video"), calib=kind == "segmentation")

    return build


# The user's own model file, handed over next to a state_dict (``--model-class model.py:Class``); also used by
# the TorchScript / .pt2 builders of the same architectures.
USER_NETS = '''"""Small models as users write them: keyword spotting, raw audio, recurrent classifiers, a tiny U-Net."""
import torch
from torch import nn


class DSCNN(nn.Module):
    """Depthwise-separable CNN for keyword spotting on 49x10 MFCCs (Zhang et al., "Hello Edge")."""

    def __init__(self, classes: int = 12, width: int = 64):
        super().__init__()
        layers = [nn.Conv2d(1, width, (10, 4), stride=(2, 2), padding=(5, 1)), nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(4):
            layers += [nn.Conv2d(width, width, 3, padding=1, groups=width), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class M5(nn.Module):
    """Raw-waveform 1-D CNN (Dai et al. 2017), input N x 1 x 16000."""

    def __init__(self, classes: int = 35, width: int = 32):
        super().__init__()
        c = width
        self.net = nn.Sequential(
            nn.Conv1d(1, c, 80, stride=16), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(c, c, 3), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(c, 2 * c, 3), nn.BatchNorm1d(2 * c), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(2 * c, 2 * c, 3), nn.BatchNorm1d(2 * c), nn.ReLU(), nn.MaxPool1d(4))
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x):
        return self.fc(self.net(x).mean(dim=2))


class RnnClassifier(nn.Module):
    """LSTM or GRU over a feature sequence (N x T x F), last state → classes."""

    def __init__(self, cell: str = "lstm", features: int = 16, hidden: int = 32, layers: int = 2,
                 bidirectional: bool = False, classes: int = 6):
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(features, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


class TinyUNet(nn.Module):
    """Two-level U-Net for per-pixel classes (N x 3 x H x W → N x classes x H x W)."""

    def __init__(self, classes: int = 4, width: int = 16):
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
        self.down1, self.down2 = block(3, width), block(width, 2 * width)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = block(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        a = self.down1(x)
        b = self.down2(self.pool(a))
        return self.head(self.dec(torch.cat([a, self.up(b)], dim=1)))
'''


def _user_net(cls: str, fmt: str, shape: tuple[int, ...], *, classifier: bool = False, calib: bool = False,
              **kwargs) -> Callable[[Path], Built]:
    def build(out: Path) -> Built:
        import importlib.util

        import torch

        (out / "model.py").write_text(USER_NETS)
        spec = importlib.util.spec_from_file_location(f"zoo_user_model_{out.name.replace('-', '_')}", out / "model.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        torch.manual_seed(0)
        m = getattr(mod, cls)(**kwargs)
        feed = {"x": _images(shape, 1, seed=0)}
        return _torch_files(out, m, feed, fmt, classifier=classifier, calib=calib,
                            model_class=f"{out / 'model.py'}:{cls}", model_kwargs=kwargs)

    return build


# ---------------------------------------------------------------------------------------------------------
# Hugging Face transformers, from small configs (random init)

_SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def _hf(model_cls: str, config_cls: str, fmt: str, feed: Callable[[], dict[str, np.ndarray]], classifier: bool = False,
        **config) -> Callable[[Path], Built]:
    def build(out: Path) -> Built:
        vision_libs(required=False)  # transformers imports torchvision when it is installed
        import torch
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**config)
        if fmt == "torchscript":
            cfg.torchscript = True  # tuples out, as the transformers docs say for torch.jit.trace
        m = getattr(transformers, model_cls)(cfg).eval()
        return _torch_files(out, m, feed(), fmt, classifier=classifier)

    return build


def _image_feed(size: int) -> Callable[[], dict[str, np.ndarray]]:
    return lambda: {"pixel_values": _images((1, 3, size, size), 1, seed=0)}


# ---------------------------------------------------------------------------------------------------------
# ONNX files written by other exporters


def _onnx_from_torch(make: Callable[[], tuple], opset: int, *, dynamo: bool = False, dynamic_axes: dict | None = None,
                     classifier: bool = True) -> Callable[[Path], Built]:
    """``make()`` → (module, {input name: example array}); exported with torch.onnx.export as a user would."""

    def build(out: Path) -> Built:
        import torch

        torch.manual_seed(0)
        module, feed = make()
        module = module.eval()
        args = tuple(torch.from_numpy(v) for v in feed.values())
        kw: dict = {"input_names": list(feed), "output_names": ["output"], "opset_version": opset, "dynamo": dynamo}
        if dynamo:
            if dynamic_axes:
                kw["dynamic_shapes"] = {k: {a: torch.export.Dim.DYNAMIC for a in v} for k, v in dynamic_axes.items()}
            kw["external_data"] = False
        else:
            kw["dynamic_axes"] = dynamic_axes
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(out / "model.onnx"), **kw)
        sample = _save_feed(out, "sample", feed)
        c = d = None
        if classifier:
            c, d = _classifier_files(out, _torch_predict(module), next(iter(feed.values())).shape)
        return Built("model.onnx", sample, c, d)

    return build


def _tv_module(name: str, size: int = 96, **kw) -> Callable[[], tuple]:
    def make():
        vision_libs()
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kw), {"input": _images((1, 3, size, size), 1, seed=0)}

    return make


def _timm_module(name: str, size: int = 96, **kw) -> Callable[[], tuple]:
    def make():
        from zoo_classes import timm_lib

        timm = timm_lib()

        return timm.create_model(name, pretrained=False, num_classes=10, **kw), {"input": _images((1, 3, size, size), 1, seed=0)}

    return make


def _rnn_module() -> tuple:
    import importlib.util
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "nets.py").write_text(USER_NETS)
        spec = importlib.util.spec_from_file_location("zoo_nets_tmp", Path(tmp) / "nets.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod.RnnClassifier("lstm", features=16), {"input": _images((1, 20, 16), 1, seed=0)}


def _mobilebert_module() -> tuple:
    vision_libs(required=False)
    import transformers

    cfg = transformers.MobileBertConfig(hidden_size=64, embedding_size=32, intra_bottleneck_size=32, true_hidden_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                        num_feedforward_networks=2, vocab_size=VOCAB, return_dict=False)
    return transformers.MobileBertModel(cfg), _tokens(1, seed=0)


def _onnx_helper(kind: str) -> Callable[[Path], Built]:
    """A graph written with onnx.helper the old way: IR 3, opset 9, every initializer also a graph input."""

    def build(out: Path) -> Built:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        inits, nodes = [], []

        def weight(name, shape):
            inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name))
            return name

        if kind == "mlp":
            x_shape, n = [1, 32], 10
            nodes += [helper.make_node("Gemm", ["x", weight("w1", (64, 32)), weight("b1", (64,))], ["h"], transB=1),
                      helper.make_node("Relu", ["h"], ["hr"]),
                      helper.make_node("Gemm", ["hr", weight("w2", (n, 64)), weight("b2", (n,))], ["y"], transB=1)]
        else:
            x_shape, n = [1, 3, 32, 32], 10
            nodes += [helper.make_node("Conv", ["x", weight("c1", (16, 3, 3, 3)), weight("cb1", (16,))], ["c"],
                                       pads=[1, 1, 1, 1]),
                      helper.make_node("Relu", ["c"], ["r"]),
                      helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                      helper.make_node("Conv", ["p", weight("c2", (32, 16, 3, 3)), weight("cb2", (32,))], ["c2o"],
                                       pads=[1, 1, 1, 1]),
                      helper.make_node("Relu", ["c2o"], ["r2"]),
                      helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
                      helper.make_node("Flatten", ["g"], ["f"], axis=1),
                      helper.make_node("Gemm", ["f", weight("fc", (n, 32)), weight("fcb", (n,))], ["y"], transB=1)]
        graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
        graph_inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
        graph = helper.make_graph(nodes, f"handmade_{kind}", graph_inputs,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], initializer=inits)
        model = helper.make_model(graph, producer_name="handmade", opset_imports=[helper.make_opsetid("", 9)])
        model.ir_version = 3
        onnx.save(model, str(out / "model.onnx"))
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        feed = {"x": _images(tuple(x_shape), 1, seed=0)}
        sample = _save_feed(out, "sample", feed)
        c = d = None
        if kind == "cnn":
            c, d = _classifier_files(out, lambda x: np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))]),
                                     tuple(x_shape))
        return Built("model.onnx", sample, c, d)

    return build


def _onnx_light(name: str) -> Callable[[Path], Built]:
    """A real model-zoo architecture that ships inside the onnx wheel (onnx/backend/test/data/light): exported by
    onnx-caffe2, IR 3, opset 9, initializers listed as graph inputs, weights rebuilt at run time by
    ConstantOfShape (the published weights stripped to keep the wheel small)."""

    def build(out: Path) -> Built:
        import onnx

        src = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
        shutil.copyfile(src, out / "model.onnx")
        proto = onnx.load(str(src), load_external_data=False)
        inits = {i.name for i in proto.graph.initializer}
        inp = next(i for i in proto.graph.input if i.name not in inits)
        shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
        sample = _save_feed(out, "sample", {inp.name: _images(shape, 1, seed=0)})
        np.save(out / "calib.npy", _images(shape, CALIB_N, seed=1))
        return Built("model.onnx", sample, "calib.npy", None)

    return build


# ---------------------------------------------------------------------------------------------------------
# Keras


def _keras_save(out: Path, model, fmt: str, feed: dict[str, np.ndarray], classifier: bool) -> Built:
    import tensorflow as tf

    if fmt == "keras":
        model.save(out / "model.keras")
        path = "model.keras"
    elif fmt == "h5":
        model.save(out / "model.h5")
        path = "model.h5"
    elif fmt == "export":  # Keras 3's model.export: a SavedModel with a serving_default signature
        model.export(str(out / "saved_model"), verbose=False)
        path = "saved_model"
    else:  # tf.saved_model.save on the Keras model
        tf.saved_model.save(model, str(out / "saved_model"))
        path = "saved_model"
    sample = _save_feed(out, "sample", {k: v[:1] for k, v in feed.items()})
    c = d = None
    if classifier:
        c, d = _classifier_files(out, lambda x: np.asarray(model(x, training=False)), next(iter(feed.values())).shape)
    return Built(path, sample, c, d)


def _keras_app(name: str, fmt: str, size: int = 96, **kw) -> Callable[[Path], Built]:
    def build(out: Path) -> Built:
        import keras

        keras.utils.set_random_seed(0)
        m = getattr(keras.applications, name)(input_shape=(size, size, 3), weights=None, classes=10, **kw)
        return _keras_save(out, m, fmt, {"x": _images((1, size, size, 3), 1, seed=0)}, classifier=True)

    return build


def _keras_custom(kind: str, fmt: str) -> Callable[[Path], Built]:
    def build(out: Path) -> Built:
        import keras
        from keras import layers

        keras.utils.set_random_seed(0)
        if kind == "normalization":  # Normalization adapted on the user's data, then a small CNN
            norm = layers.Normalization(axis=-1)
            norm.adapt(np.random.default_rng(3).uniform(0, 255, (64, 64, 64, 3)).astype(np.float32))
            inp = keras.Input((64, 64, 3), name="image")
            x = norm(inp)
            for f in (16, 32):
                x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
                x = layers.MaxPooling2D()(x)
            x = layers.GlobalAveragePooling2D()(x)
            m = keras.Model(inp, layers.Dense(10)(x))
            feed = {"image": np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)}
            return _keras_save(out, m, fmt, feed, classifier=True)
        if kind == "rescale_resize":  # raw 128x128 uint8-range pixels in; Resizing + Rescaling inside the model
            inp = keras.Input((128, 128, 3), name="pixels")
            x = layers.Resizing(64, 64)(inp)
            x = layers.Rescaling(1 / 127.5, offset=-1)(x)
            x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
            x = layers.DepthwiseConv2D(3, activation="relu")(x)
            x = layers.Conv2D(32, 1, activation="relu")(x)
            x = layers.GlobalAveragePooling2D()(x)
            m = keras.Model(inp, layers.Dense(10, activation="softmax")(x))
            feed = {"pixels": np.random.default_rng(0).uniform(0, 255, (1, 128, 128, 3)).astype(np.float32)}
            return _keras_save(out, m, fmt, feed, classifier=True)
        if kind == "lstm_text":  # token ids → Embedding → LSTM → classes
            inp = keras.Input((TOKENS,), dtype="int32", name="tokens")
            x = layers.Embedding(VOCAB, 32)(inp)
            x = layers.LSTM(32)(x)
            m = keras.Model(inp, layers.Dense(4)(x))
            feed = {"tokens": np.random.default_rng(0).integers(0, VOCAB, (1, TOKENS)).astype(np.int32)}
            return _keras_save(out, m, fmt, feed, classifier=False)
        if kind == "gru_seq":  # sensor sequence → GRU → classes
            inp = keras.Input((20, 8), name="series")
            x = layers.GRU(24, return_sequences=True)(inp)
            x = layers.GRU(24)(x)
            m = keras.Model(inp, layers.Dense(6)(x))
            return _keras_save(out, m, fmt, {"series": _images((1, 20, 8), 1, seed=0)}, classifier=False)
        if kind == "conv1d_audio":  # 1 s of 16 kHz audio → Conv1D stack
            inp = keras.Input((AUDIO, 1), name="audio")
            x = inp
            for f, k, s in ((16, 80, 16), (32, 3, 1), (32, 3, 1)):
                x = layers.Conv1D(f, k, strides=s, activation="relu")(x)
                x = layers.MaxPooling1D(4)(x)
            x = layers.GlobalAveragePooling1D()(x)
            m = keras.Model(inp, layers.Dense(12)(x))
            return _keras_save(out, m, fmt, {"audio": _images((1, AUDIO, 1), 1, seed=0)}, classifier=False)
        if kind == "two_inputs":  # image + metadata vector, one output
            img = keras.Input((48, 48, 3), name="image")
            meta = keras.Input((5,), name="meta")
            x = layers.Conv2D(16, 3, activation="relu")(img)
            x = layers.GlobalAveragePooling2D()(x)
            x = layers.Concatenate()([x, layers.Dense(8, activation="relu")(meta)])
            m = keras.Model([img, meta], layers.Dense(3)(x))
            feed = {"image": _images((1, 48, 48, 3), 1, seed=0), "meta": _images((1, 5), 1, seed=4)}
            return _keras_save(out, m, fmt, feed, classifier=False)
        raise ValueError(kind)

    return build


# ---------------------------------------------------------------------------------------------------------
# The registry: an explicit table.

_BERT = {**_SMALL, "vocab_size": VOCAB, "max_position_embeddings": 64}
_VIT = {**_SMALL, "image_size": 64, "patch_size": 16, "num_labels": 10}


def _token_feed() -> dict[str, np.ndarray]:
    return _tokens(1, seed=0)


def _ids_feed() -> dict[str, np.ndarray]:
    return {"input_ids": _tokens(1, seed=0)["input_ids"]}


def _timm_models() -> list[ZooModel]:
    """Timm image classifiers, 96 px unless the arch needs more."""
    Z = ZooModel
    return [
        Z("timm_resnet18", "cnn", "torchscript", _timm("resnet18", "torchscript"), "x 1x3x96x96", "timm"),
        Z("timm_mobilenetv3_small", "cnn", "pt2", _timm("mobilenetv3_small_100", "pt2"), "x 1x3x96x96", "timm"),
        Z("timm_efficientnet_b0", "cnn", "pt2", _timm("efficientnet_b0", "pt2"), "x 1x3x96x96", "timm"),
        Z("timm_mobilenetv2_100", "cnn", "torchscript", _timm("mobilenetv2_100", "torchscript"), "x 1x3x96x96", "timm"),
        Z("timm_regnetx_002", "cnn", "pt2", _timm("regnetx_002", "pt2"), "x 1x3x96x96", "timm"),
        Z("timm_ghostnet_100", "cnn", "torchscript", _timm("ghostnet_100", "torchscript"), "x 1x3x96x96", "timm"),
        Z("timm_convnext_atto", "cnn", "pt2", _timm("convnext_atto", "pt2"), "x 1x3x96x96", "timm"),
        Z("timm_lcnet_050", "cnn", "torchscript", _timm("lcnet_050", "torchscript"), "x 1x3x96x96", "timm"),
        Z("timm_mnasnet_small", "cnn", "pt2", _timm("mnasnet_small", "pt2"), "x 1x3x96x96", "timm"),
        Z("timm_tinynet_e", "cnn", "torchscript", _timm("tinynet_e", "torchscript"), "x 1x3x96x96", "timm"),
        Z("timm_repvgg_a0", "cnn", "pt2", _timm("repvgg_a0", "pt2"), "x 1x3x96x96", "timm"),
        Z("timm_hardcorenas_a", "cnn", "torchscript", _timm("hardcorenas_a", "torchscript"), "x 1x3x96x96", "timm"),
        Z("timm_mobileone_s0", "cnn", "pt2", _timm("mobileone_s0", "pt2"), "x 1x3x96x96", "timm"),
        Z("timm_edgenext_xx_small", "cnn", "torchscript", _timm("edgenext_xx_small", "torchscript"), "x 1x3x96x96", "timm"),
        Z("timm_efficientvit_b0", "cnn", "pt2", _timm("efficientvit_b0", "pt2", size=128), "x 1x3x128x128", "timm"),
        Z("timm_mobilevit_xxs", "cnn", "torchscript", _timm("mobilevit_xxs", "torchscript", size=128), "x 1x3x128x128", "timm"),
        Z("timm_resnet50", "cnn", "pt2", _timm("resnet50", "pt2"), "x 1x3x96x96", "timm"),
        Z("timm_mobilenetv4_conv_small", "cnn", "torchscript", _timm("mobilenetv4_conv_small", "torchscript"),
          "x 1x3x96x96", "timm"),
        Z("timm_rexnet_100", "cnn", "pt2", _timm("rexnet_100", "pt2"), "x 1x3x96x96", "timm"),
        Z("timm_efficientnet_lite0_sd", "cnn", "state_dict", _timm("efficientnet_lite0", "state_dict"), "x 1x3x96x96", "timm"),
        Z("timm_mobilenetv3_large_sd", "cnn", "state_dict", _timm("mobilenetv3_large_100", "state_dict"), "x 1x3x96x96", "timm"),
        Z("timm_vit_tiny", "vit", "pt2", _timm("vit_tiny_patch16_224", "pt2", img_size=96), "x 1x3x96x96", "timm"),
        Z("timm_deit_tiny", "vit", "torchscript", _timm("deit_tiny_patch16_224", "torchscript", img_size=96),
          "x 1x3x96x96", "timm"),
    ]


def _torchvision_models() -> list[ZooModel]:
    """Torchvision."""
    Z = ZooModel
    return [
        Z("tv_resnet18_sd", "cnn", "state_dict", _tv("resnet18", "state_dict", num_classes=10), "x 1x3x96x96", "torchvision"),
        Z("tv_mobilenet_v2", "cnn", "torchscript", _tv("mobilenet_v2", "torchscript", num_classes=10),
          "x 1x3x96x96", "torchvision"),
        Z("tv_mobilenet_v3_small", "cnn", "pt2", _tv("mobilenet_v3_small", "pt2", num_classes=10), "x 1x3x96x96", "torchvision"),
        Z("tv_squeezenet1_1", "cnn", "torchscript", _tv("squeezenet1_1", "torchscript", num_classes=10),
          "x 1x3x96x96", "torchvision"),
        Z("tv_shufflenet_v2_x0_5", "cnn", "pt2", _tv("shufflenet_v2_x0_5", "pt2", num_classes=10), "x 1x3x96x96", "torchvision"),
        Z("tv_mnasnet0_5_sd", "cnn", "state_dict", _tv("mnasnet0_5", "state_dict", num_classes=10), "x 1x3x96x96", "torchvision"),
        Z("tv_googlenet", "cnn", "torchscript",
          _tv("googlenet", "torchscript", num_classes=10, aux_logits=False, init_weights=True),
          "x 1x3x96x96", "torchvision"),
        Z("tv_efficientnet_b0", "cnn", "pt2", _tv("efficientnet_b0", "pt2", num_classes=10), "x 1x3x96x96", "torchvision"),
        Z("tv_regnet_y_400mf", "cnn", "torchscript", _tv("regnet_y_400mf", "torchscript", num_classes=10),
          "x 1x3x96x96", "torchvision"),
        Z("tv_densenet121", "cnn", "pt2", _tv("densenet121", "pt2", num_classes=10), "x 1x3x96x96", "torchvision"),
        Z("tv_lraspp_mobilenet_v3", "seg", "torchscript",
          _tv("lraspp_mobilenet_v3_large", "torchscript", size=128, kind="segmentation", weights_backbone=None, num_classes=4),
          "x 1x3x128x128 → dict {out}", "torchvision"),
        Z("tv_r3d_18", "video", "pt2", _tv("r3d_18", "pt2", size=64, kind="video", num_classes=10),
          "x 1x3x4x64x64", "torchvision"),
    ]


def _user_models() -> list[ZooModel]:
    """The user's own nn.Modules (model.py next to the weights)."""
    Z = ZooModel
    return [
        Z("user_dscnn_kws_sd", "cnn", "state_dict", _user_net("DSCNN", "state_dict", (1, 1, 49, 10), classifier=True),
          "x 1x1x49x10 MFCC", "model.py", fast=True),
        Z("user_dscnn_kws", "cnn", "torchscript", _user_net("DSCNN", "torchscript", (1, 1, 49, 10), classifier=True),
          "x 1x1x49x10 MFCC", "model.py"),
        Z("user_m5_audio", "audio", "torchscript", _user_net("M5", "torchscript", (1, 1, AUDIO)),
          "x 1x1x16000 waveform", "model.py"),
        Z("user_lstm", "recurrent", "torchscript", _user_net("RnnClassifier", "torchscript", (1, 20, 16)),
          "x 1x20x16", "model.py", fast=True),
        Z("user_gru", "recurrent", "pt2", _user_net("RnnClassifier", "pt2", (1, 20, 16), cell="gru"), "x 1x20x16", "model.py",
          fast=True),
        Z("user_bilstm_sd", "recurrent", "state_dict", _user_net("RnnClassifier", "state_dict", (1, 20, 16), bidirectional=True),
          "x 1x20x16", "model.py"),
        Z("user_tiny_unet", "seg", "pt2", _user_net("TinyUNet", "pt2", (1, 3, 64, 64), calib=True), "x 1x3x64x64", "model.py",
          fast=True),
    ]


def _hf_models() -> list[ZooModel]:
    """Hugging Face transformers, random init from small configs."""
    Z = ZooModel
    return [
        Z("hf_bert", "text", "torchscript", _hf("BertModel", "BertConfig", "torchscript", _token_feed, **_BERT),
          "input_ids, attention_mask int64 1x16", "transformers", fast=True),
        Z("hf_distilbert", "text", "pt2", _hf("DistilBertModel", "DistilBertConfig", "pt2", _token_feed, dim=64, hidden_dim=128,
                                               n_layers=2, n_heads=2, vocab_size=VOCAB),
          "input_ids, attention_mask int64 1x16", "transformers"),
        Z("hf_roberta_cls", "text", "pt2", _hf("RobertaForSequenceClassification", "RobertaConfig", "pt2", _token_feed,
                                                num_labels=3, **{**_BERT, "max_position_embeddings": 66}),
          "input_ids, attention_mask int64 1x16", "transformers"),
        Z("hf_gpt2", "text", "pt2", _hf("GPT2Model", "GPT2Config", "pt2", _ids_feed, n_embd=64, n_layer=2, n_head=2,
                                         vocab_size=VOCAB, n_positions=64, use_cache=False),
          "input_ids int64 1x16", "transformers"),
        Z("hf_vit", "vit", "pt2", _hf("ViTForImageClassification", "ViTConfig", "pt2", _image_feed(64), classifier=True, **_VIT),
          "pixel_values 1x3x64x64", "transformers", fast=True),
        Z("hf_deit", "vit", "torchscript", _hf("DeiTForImageClassification", "DeiTConfig", "torchscript", _image_feed(64),
                                               classifier=True, **_VIT), "pixel_values 1x3x64x64", "transformers"),
        Z("hf_mobilevit", "vit", "pt2", _hf("MobileViTForImageClassification", "MobileViTConfig", "pt2", _image_feed(128),
                                            classifier=True, image_size=128, hidden_sizes=[64, 80, 96],
                                            neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], num_labels=10),
          "pixel_values 1x3x128x128", "transformers"),
        Z("hf_whisper_encoder", "audio", "pt2", _hf("WhisperForAudioClassification", "WhisperConfig", "pt2",
                                                    lambda: {"input_features": _images((1, 80, 100), 1, seed=0)},
                                                    d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128,
                                                    decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=128,
                                                    num_mel_bins=80, max_source_positions=50, vocab_size=VOCAB, num_labels=5),
          "input_features 1x80x100 (log-mel)", "transformers"),
        Z("hf_wav2vec2", "audio", "torchscript", _hf("Wav2Vec2Model", "Wav2Vec2Config", "torchscript",
                                                     lambda: {"input_values": _images((1, AUDIO), 1, seed=0)},
                                                     **_SMALL, conv_dim=(32, 32, 32), conv_stride=(5, 4, 4),
                                                     conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16,
                                                     num_conv_pos_embedding_groups=4),
          "input_values 1x16000 float", "transformers", fast=True),
        Z("hf_clip_text", "text", "pt2", _hf("CLIPTextModel", "CLIPTextConfig", "pt2", _ids_feed, **_SMALL, vocab_size=VOCAB,
                                              max_position_embeddings=32), "input_ids int64 1x16", "transformers"),
        Z("hf_clip_vision", "vit", "torchscript", _hf("CLIPVisionModel", "CLIPVisionConfig", "torchscript", _image_feed(64),
                                                      **_SMALL, image_size=64, patch_size=16),
          "pixel_values 1x3x64x64", "transformers"),
    ]


def _onnx_models() -> list[ZooModel]:
    """ONNX files from other exporters, old opsets, dynamic axes."""
    Z = ZooModel
    return [
        Z("onnx_opset9_resnet18", "cnn", "onnx", _onnx_from_torch(_tv_module("resnet18", num_classes=10), 9),
          "input 1x3x96x96, opset 9", "torch.onnx (TorchScript)"),
        Z("onnx_opset11_mobilenetv2_dynhw", "cnn", "onnx",
          _onnx_from_torch(_tv_module("mobilenet_v2", num_classes=10), 11,
                           dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}}),
          "input Nx3xHxW, opset 11", "torch.onnx (TorchScript)"),
        Z("onnx_opset13_squeezenet_dynbatch", "cnn", "onnx",
          _onnx_from_torch(_tv_module("squeezenet1_1", num_classes=10), 13,
                           dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}),
          "input Nx3x96x96, opset 13", "torch.onnx (TorchScript)"),
        Z("onnx_opset17_lstm_dynseq", "recurrent", "onnx",
          _onnx_from_torch(_rnn_module, 17, dynamic_axes={"input": {0: "batch", 1: "time"}}, classifier=False),
          "input NxTx16, opset 17", "torch.onnx (TorchScript)", fast=True),
        Z("onnx_opset14_mobilebert_dynseq", "text", "onnx",
          _onnx_from_torch(_mobilebert_module, 14, classifier=False,
                           dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                         "attention_mask": {0: "batch", 1: "sequence"}}),
          "input_ids, attention_mask int64 NxS, opset 14", "torch.onnx (TorchScript)"),
        Z("onnx_opset18_dynamo_efficientnet", "cnn", "onnx", _onnx_from_torch(_timm_module("efficientnet_b0"), 18, dynamo=True),
          "input 1x3x96x96, opset 18", "torch.onnx (dynamo)"),
        Z("onnx_opset20_vit_tiny", "vit", "onnx", _onnx_from_torch(_timm_module("vit_tiny_patch16_224", img_size=96), 20),
          "input 1x3x96x96, opset 20", "torch.onnx (TorchScript)"),
        Z("onnx_ir3_mlp", "mlp", "onnx", _onnx_helper("mlp"),
          "x 1x32, IR 3 opset 9, initializers as inputs", "onnx.helper", fast=True),
        Z("onnx_ir3_cnn", "cnn", "onnx", _onnx_helper("cnn"), "x 1x3x32x32, IR 3 opset 9, initializers as inputs", "onnx.helper",
          fast=True),
        Z("onnxzoo_squeezenet", "cnn", "onnx", _onnx_light("squeezenet"), "data_0 1x3x224x224, opset 9", "onnx wheel (caffe2)"),
        Z("onnxzoo_shufflenet", "cnn", "onnx", _onnx_light("shufflenet"),
          "gpu_0/data_0 1x3x224x224, opset 9", "onnx wheel (caffe2)"),
        Z("onnxzoo_inception_v1", "cnn", "onnx", _onnx_light("inception_v1"),
          "data_0 1x3x224x224, opset 9", "onnx wheel (caffe2)"),
        Z("onnxzoo_resnet50", "cnn", "onnx", _onnx_light("resnet50"), "gpu_0/data_0 1x3x224x224, opset 9", "onnx wheel (caffe2)"),
        Z("onnxzoo_densenet121", "cnn", "onnx", _onnx_light("densenet121"), "data_0 1x3x224x224, opset 9", "onnx wheel (caffe2)"),
    ]


def _keras_models() -> list[ZooModel]:
    """Keras.applications (weights=None) and Keras models with preprocessing layers."""
    Z = ZooModel
    return [
        Z("keras_mobilenetv2", "cnn", "keras", _keras_app("MobileNetV2", "keras", alpha=0.35),
          "1x96x96x3 NHWC", "keras.applications", fast=True),
        Z("keras_mobilenetv3small", "cnn", "h5", _keras_app("MobileNetV3Small", "h5"), "1x96x96x3 (Rescaling inside)",
          "keras.applications"),
        Z("keras_efficientnetb0", "cnn", "savedmodel", _keras_app("EfficientNetB0", "export"),
          "1x96x96x3 (Rescaling+Normalization inside)", "keras.applications"),
        Z("keras_efficientnetv2b0", "cnn", "keras", _keras_app("EfficientNetV2B0", "keras"), "1x96x96x3", "keras.applications"),
        Z("keras_nasnetmobile", "cnn", "h5", _keras_app("NASNetMobile", "h5"), "1x96x96x3", "keras.applications"),
        Z("keras_densenet121", "cnn", "savedmodel", _keras_app("DenseNet121", "tf_saved_model"),
          "1x96x96x3", "keras.applications"),
        Z("keras_resnet50", "cnn", "keras", _keras_app("ResNet50", "keras"), "1x96x96x3", "keras.applications"),
        Z("keras_normalization_cnn", "cnn", "keras", _keras_custom("normalization", "keras"),
          "image 1x64x64x3 (Normalization.adapt)", "keras", fast=True),
        Z("keras_rescale_resize_cnn", "cnn", "keras", _keras_custom("rescale_resize", "keras"),
          "pixels 1x128x128x3 (Resizing, Rescaling)", "keras"),
        Z("keras_lstm_text", "recurrent", "keras", _keras_custom("lstm_text", "keras"), "tokens int32 1x16", "keras"),
        Z("keras_gru_seq", "recurrent", "h5", _keras_custom("gru_seq", "h5"), "series 1x20x8", "keras"),
        Z("keras_conv1d_audio", "audio", "savedmodel", _keras_custom("conv1d_audio", "tf_saved_model"),
          "audio 1x16000x1", "keras"),
        Z("keras_two_inputs", "mlp", "keras", _keras_custom("two_inputs", "keras"), "image 1x48x48x3 + meta 1x5", "keras"),
    ]


def _registry() -> list[ZooModel]:
    return [*_timm_models(), *_torchvision_models(), *_user_models(), *_hf_models(), *_onnx_models(), *_keras_models()]


MODELS: list[ZooModel] = _registry()
BY_NAME: dict[str, ZooModel] = {m.name: m for m in MODELS}
FAST: list[str] = [m.name for m in MODELS if m.fast]
