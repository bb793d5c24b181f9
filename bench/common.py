"""Shared by the benchmarks: machine description, result files in bench/results/, and the cached bench models and
bundles in bench/models/.

A cached bundle is keyed by what built it: a hash of edgeconv's source tree (every file under edgeconv/ and the device
profiles in targets/), edgeconv's version, the converter toolchain's versions, the source model's bytes and the
convert arguments. The key is part of the bundle's directory name, so a bundle made by older code is never found,
let alone reused: it is rebuilt, and the stale one is deleted. The sample models themselves are keyed by the
script that makes them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# EDGECONV_BENCH_RESULTS=DIR sends results elsewhere (smoke runs must not overwrite the recorded ones)
RESULTS = Path(os.environ.get("EDGECONV_BENCH_RESULTS") or ROOT / "bench" / "results")
MODELS = ROOT / "bench" / "models"
EDGECONV = [sys.executable, "-m", "edgeconv"]
# what else builds a bundle: a new release of any of these may build a different artifact
TOOLCHAIN = ("onnx", "onnxruntime", "onnxslim", "onnxsim", "onnxscript", "onnx2tf", "tensorflow-cpu", "tensorflow", "tf-keras",
             "keras", "torch", "tf2onnx", "openvino", "nncf", "ai-edge-litert", "numpy")


def cpu_model() -> str:
    """The CPU's model name (ratios differ between an Intel and an AMD part, so every result says which ran it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(dists=TOOLCHAIN) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty elsewhere)."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def machine() -> dict:
    info = _cpuinfo()
    flags = info.get("flags", "").split()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16") if f in flags]
    # a VM may show only "AMD EPYC" or "Intel(R) Xeon(R) Processor": family/model/stepping say which generation
    cpu_id = " ".join(f"{k} {info[k]}" for k in ("vendor_id", "cpu family", "model", "stepping") if k in info)
    return {"cpu": cpu_model(), "cpu_id": cpu_id, "cpu_isa": isa, "cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
            "platform": platform.platform(), "python": platform.python_version(),
            "edgeconv": {"version": edgeconv_version(), "source_sha256": source_hash()[:16]},
            "versions": versions(("onnxruntime", "onnx", "onnx2tf", "torch", "tensorflow-cpu", "openvino", "ai-edge-litert",
                                  "numpy")),
            "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def splice_readme(table: str, begin: str, end: str) -> None:
    """README.md with ``table`` between its ``begin`` and ``end`` markers (a generated table is never edited by hand)."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"README.md has no {begin} … {end} markers: add them where the table belongs")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{table}{end}{tail}")


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **result}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "machine"}, indent=2))
    print(f"wrote {path} (CPU: {doc['machine']['cpu']})")
    return path


def _hash_files(paths, root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


@cache
def source_hash() -> str:
    """sha256 of edgeconv's source tree: every file under edgeconv/ (code, device runner, device data) and targets/*.toml."""
    files = [p for p in (ROOT / "edgeconv").rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return _hash_files([*files, *(ROOT / "targets").glob("*.toml")], ROOT)


def edgeconv_version() -> str:
    text = (ROOT / "edgeconv" / "__init__.py").read_text()
    return next((line.split("=", 1)[1].strip().strip("\"'") for line in text.splitlines() if line.startswith("__version__")), "?")


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _keyed(name: str, key: str, suffix: str = "") -> Path:
    """bench/models/NAME-KEY[SUFFIX]; deletes NAME-<other key>[SUFFIX] (stale: built by other code or from another source)."""
    out = MODELS / f"{name}-{key}{suffix}"
    for old in MODELS.glob(f"{name}-*{suffix}"):
        rest = old.name[len(name) + 1:len(old.name) - len(suffix) if suffix else None]
        if old != out and len(rest) == len(key) and all(c in "0123456789abcdef" for c in rest):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    return out


def mobilenet(suffix: str = ".keras") -> Path:
    """The MobileNetV2-sized source model, Keras (``.keras``) or PyTorch (``.pt``), made in bench/models/ and remade when
    the scripts that make it change."""
    maker = [ROOT / "samples" / "make_mobilenet.py", ROOT / "samples" / "mobilenet_torch.py"]
    key = hashlib.sha256((_hash_files(maker, ROOT)
                          + json.dumps(versions(("torch", "keras", "tensorflow-cpu")))).encode()).hexdigest()[:12]
    out = _keyed("mobilenetv2", key, suffix)
    if not out.exists():
        MODELS.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".tmp" + suffix)
        subprocess.run([sys.executable, str(maker[0]), "--out", str(tmp)], check=True, timeout=600, capture_output=True)
        tmp.replace(out)
    return out


def bundle_key(source: Path, convert_args: tuple[str, ...]) -> str:
    """What a cached bundle was built by and from: edgeconv's version and source tree, the toolchain, the source model, the
    arguments. Calibration or data files named in the arguments count by their bytes."""
    files = [file_hash(Path(a)) for a in convert_args if Path(a).suffix in (".npz", ".npy") and Path(a).is_file()]
    doc = {"edgeconv": edgeconv_version(), "source_tree": source_hash(), "toolchain": versions(), "source": file_hash(source),
           "args": list(convert_args), "files": files}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def bundle(source: Path, name: str, *convert_args: str) -> Path:
    """``edgeconv convert SOURCE -o bench/models/NAME-KEY ARGS…``: rebuilt whenever edgeconv's version or source, the
    toolchain, the source model or the arguments change (KEY, see :func:`bundle_key`); never a bundle of older code."""
    out = _keyed(name, bundle_key(source, convert_args))
    if not (out / "manifest.json").exists():
        MODELS.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        r = subprocess.run([*EDGECONV, "convert", str(source), "-o", str(out), "--force", *convert_args], timeout=3600, cwd=ROOT,
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"edgeconv convert {source.name} {' '.join(convert_args)} failed (exit {r.returncode}):\n"
                             + (r.stderr or r.stdout)[-3000:])
    return out


def mobilenet_onnx() -> Path:
    """The Keras MobileNetV2-sized model as an edgeconv ONNX bundle."""
    return bundle(mobilenet(".keras"), "mobilenetv2-onnx", "--target", "onnx")


def digits_onnx() -> Path:
    """The digits CNN (samples/digits_cnn.pt) as an edgeconv ONNX bundle."""
    return bundle(ROOT / "samples" / "digits_cnn.pt", "digits-onnx")


def alternating(measure, labels: tuple[str, ...], rounds: int) -> list[dict]:
    """``rounds`` rounds of ``measure(label)`` for every label, the order reversed each round (A, B, then B, A), so drift
    on a shared machine lands on every side. Returns one ``{label: value}`` per round."""
    out = []
    for i in range(rounds):
        row = {}
        for label in (labels if i % 2 == 0 else labels[::-1]):
            row[label] = measure(label)
        out.append(row)
    return out


def median(xs) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


# The bare script a user would write to time an ONNX model: its own process, ONNX Runtime, the same session options as
# edgeconv's backend (intra-op threads, one inter-op thread, CPU provider), the same inputs, warm-up and timed runs,
# each run timed around session.run; warm-up and timed runs by count and, when given, by time too (at least
# WARMUP_SECONDS and MIN_SECONDS, as edgeconv's core/stats.py times them). It names the outputs as the backend does:
# run(None, …) costs ~1 µs more per call, 5% of the digits CNN, and would flatter validate.
BARE_ORT = """
import json, sys, time
import numpy as np
import onnxruntime as ort
model, feed, threads, warmup, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
min_s, warmup_s = (float(sys.argv[6]), float(sys.argv[7])) if len(sys.argv) > 7 else (0.0, 0.0)
so = ort.SessionOptions()
so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
names = [o.name for o in sess.get_outputs()]
with np.load(feed) as z:
    feed = {k: z[k] for k in z.files}
t_end, n = time.perf_counter() + warmup_s, 0
while n < warmup or time.perf_counter() < t_end:
    sess.run(names, feed)
    n += 1
times = []
t_end = time.perf_counter() + min_s
while len(times) < runs or time.perf_counter() < t_end:
    t0 = time.perf_counter()
    sess.run(names, feed)
    times.append(time.perf_counter() - t0)
print(json.dumps({"p50_ms": float(np.median(times)) * 1e3, "runs": len(times)}))
"""


def bare_ort(model: Path, feed_npz: Path, threads: int, warmup: int, runs: int, min_seconds: float = 0.0,
             warmup_seconds: float = 0.0) -> list[str]:
    """The command line of the bare ONNX Runtime script (see BARE_ORT)."""
    return [sys.executable, "-c", BARE_ORT, str(model), str(feed_npz), str(threads), str(warmup), str(runs), str(min_seconds),
            str(warmup_seconds)]


def timed_json(cmd: list[str], cwd: Path = ROOT) -> tuple[float, dict]:
    """Run a command that prints one JSON document; its wall time (start to exit) and the document."""
    import time

    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=cwd, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed (exit {r.returncode}):\n{(r.stderr or r.stdout)[-3000:]}")
    return wall, json.loads(r.stdout)
