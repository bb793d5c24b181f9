"""The zoo's fast subset: about a dozen small models, as users hand them over, through the CLI on the main targets.

Models come from the zoo's own builders (bench/zoo_models.py, random weights, no download) and each cell runs the
way `bench/zoo.py` runs it: `edgeconv convert … --json` then `validate`, in one long-lived worker process that runs
the CLI in-process (exit codes and stderr as a user gets them), on real runtimes. The subset needs neither timm nor
torchvision (`edgeconv[zoo]` only, as in CI). A cell passes when both exit 0, or, for a refusal documented in
REFUSALS, when convert exits 2/3 with that message and no traceback. Budget: about 3 minutes on a 2-core machine.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

for _lib in ("torch", "transformers", "tensorflow"):
    if importlib.util.find_spec(_lib) is None:  # find_spec, not import: the imports are slow
        pytest.skip(f"the zoo's fast subset needs {_lib} (pip install -e '.[zoo,keras]')", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import zoo  # noqa: E402 - bench/ goes on the path first, and only when the zoo's libraries are installed
from zoo_models import BY_NAME, Built, vision_libs  # noqa: E402

pytestmark = pytest.mark.slow

# (model, target) cells: onnx for the whole subset (every format and kind); openvino and jetson for four; tflite for
# three. None of them needs timm or torchvision.
ONNX = list(zoo.FAST)
OPENVINO_JETSON = ["user_dscnn_kws_sd", "hf_bert", "onnx_ir3_cnn", "keras_normalization_cnn"]
TFLITE = ["user_dscnn_kws_sd", "onnx_ir3_mlp", "keras_normalization_cnn"]
CELLS = [(m, "onnx") for m in ONNX] + [(m, t) for m in OPENVINO_JETSON for t in ("openvino", "jetson")]
CELLS += [(m, "tflite") for m in TFLITE]

# Refusals the lead documents: (model, target) -> words the one-line message must contain. Such a cell must exit
# 2 or 3 with that message and no traceback; every other cell must convert and validate (exit 0).
REFUSALS: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """One long-lived `zoo.py --worker` for every cell (the imports are paid once), with the zoo's export cache in a
    fresh folder: a model's later targets take its export from the first, and nothing comes from an earlier session."""
    zoo.ENV["EDGECONV_CACHE_DIR"] = str(tmp_path_factory.mktemp("export-cache"))
    w = zoo.Worker(recycle=100, scratch=tmp_path_factory.mktemp("worker"))
    yield w
    w.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each fast model built once, on first use, by its zoo builder."""
    # With torchvision installed (a zoo-vision venv), `import transformers` imports it: apply the zoo's import fix
    # first. Without torchvision (CI) this does nothing.
    vision_libs(required=False)
    base = tmp_path_factory.mktemp("zoo")
    made: dict[str, tuple[Path, Built]] = {}

    def get(name: str) -> tuple[Path, Built]:
        if name not in made:
            folder = base / name
            folder.mkdir()
            made[name] = (folder, BY_NAME[name].build(folder))
        return made[name]

    return get


def test_fast_subset_is_about_a_dozen_small_models_without_timm_or_torchvision():
    assert 10 <= len(zoo.FAST) <= 16
    assert {BY_NAME[m].fmt for m in zoo.FAST} >= {"torchscript", "pt2", "state_dict", "onnx", "keras"}
    assert not {BY_NAME[m].origin for m in zoo.FAST} & {"timm", "torchvision"}


@pytest.mark.parametrize(("model", "target"), CELLS, ids=[f"{m}-{t}" for m, t in CELLS])
def test_zoo_cell(built, worker, tmp_path, model, target):
    folder, b = built(model)
    cell = zoo.run_cell(BY_NAME[model], folder, b, target, work=tmp_path, timeout=300, model_hash="test", rev="test",
                        runner=worker)
    assert not cell.traceback, f"traceback in stderr: {cell}"
    refusal = REFUSALS.get((model, target))
    if refusal:
        assert cell.status == "refused" and cell.exit_code in (2, 3), cell
        assert refusal in cell.reason, cell
    else:
        assert cell.status == zoo.OK, f"{cell.stage} exit {cell.exit_code}: {cell.reason}"
