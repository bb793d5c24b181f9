"""Dict and named outputs keep their names on every target; accuracy is computed on the scored output (``--score-output``,
else a logits-like name, else the labels' range, else the first (N, C) output) and the report names it; a drop of
exactly the budget passes (issue 27)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeconv.core.accuracy import BUDGET_TOLERANCE_POINTS, drop_budget, score_output
from edgeconv.errors import BadInput

torch = pytest.importorskip("torch")

NAMES = ["features", "logits"]


# -- the rules, on arrays -------------------------------------------------------------------------------------------
def test_the_scored_output_is_chosen_by_flag_then_name_then_labels_then_shape():
    feats, logits, boxes = np.zeros((4, 16)), np.zeros((4, 10)), np.zeros((4, 4))
    labels = np.array([0, 9, 3, 5])
    assert score_output(NAMES, [feats, logits], labels) == (1, "its name")
    assert score_output(["a", "class_scores"], [feats, logits]) == (1, "its name")
    assert score_output(NAMES, [feats, logits], labels, "features") == (0, "--score-output")
    # no telling name: the output whose width fits the labels (boxes has 4 columns, the labels go up to 9)
    assert score_output(["boxes", "head"], [boxes, logits], labels) == (1, "the labels' range (classes 0-9)")
    assert score_output(["boxes", "head"], [boxes, logits]) == (0, "the first output of shape (N, classes)")
    assert score_output(["embedding"], [np.zeros((4, 3, 2))]) == (None, None)
    with pytest.raises(BadInput, match="the model's outputs are features, logits"):
        score_output(NAMES, [feats, logits], labels, "probs")
    with pytest.raises(BadInput, match="accuracy needs class scores"):
        score_output(["x", "y"], [np.zeros((4, 3, 2)), logits], labels, "x")


def test_a_drop_of_exactly_the_budget_passes():
    """1 miss in 100 is a drop of 1 point, which floats make 1.0000000000000009 (or ...142): within --max-accuracy-drop 1."""
    assert (0.98 - 0.97) * 100 > 1.0 and (1.0 - 0.99) * 100 > 1.0  # why counts are compared, not these
    for src, art in ((100, 99), (98, 97), (57, 56)):
        b = drop_budget(src / 100, art / 100, 100, 1.0)
        assert b["ok"] and b["drop_points"] == 1.0, b
        assert f"{src} of 100 items correct (source) vs {art} (artifact): drop 1 item(s)" in b["compared"]
        assert f"<= budget 1.0 points (tolerance {BUDGET_TOLERANCE_POINTS:g} points)" in b["compared"]
    assert not drop_budget(0.99, 0.97, 100, 1.0)["ok"]
    assert not drop_budget(1.0, 0.99, 100, 0.99)["ok"]
    assert drop_budget(0.5, 0.495, 200, 0.5)["ok"] and drop_budget(0.9, 0.95, 100, 0.0)["drop_points"] == -5.0
    assert drop_budget(1.0, 0.5, 10, None)["ok"]


# -- real models on real runtimes -----------------------------------------------------------------------------------
class Named(torch.nn.Module):
    """``{"features": (N, 16), "logits": (N, 10)}``. The logits are the input itself, plus ``nudge`` on class 7."""

    def __init__(self, nudge: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Linear(10, 16)
        self.head = torch.nn.Linear(10, 10)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(10))
            self.head.bias.zero_()
            self.head.bias[7] = nudge

    def forward(self, x):
        return {"features": torch.relu(self.features(x)) * 10, "logits": self.head(x)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """a.pt2 (99 of 100 items right), b.pt2 (100 of 100: its nudge turns item 0 to its label), k.keras (two named
    outputs), the labelled data, and an export cache shared by the conversions."""
    keras = pytest.importorskip("keras")
    d = tmp_path_factory.mktemp("named")
    y = np.arange(100) % 10
    x = np.zeros((100, 10), np.float32)
    x[np.arange(100), y] = 1.0
    x[0] = 0
    x[0, 2], x[0, 7], y[0] = 1.0, 0.8, 7  # a.pt2 says 2, b.pt2 says 7
    np.savez(d / "data.npz", x=x, y=y)
    for name, nudge in (("a", 0.0), ("b", 0.5)):
        torch.export.save(torch.export.export(Named(nudge).eval(), (torch.from_numpy(x[:1]),)), str(d / f"{name}.pt2"))
    keras.utils.set_random_seed(0)
    inp = keras.Input((10,), name="x")
    feats = keras.layers.Dense(16, activation="relu", name="features")(inp)
    logits = keras.layers.Dense(10, name="logits")(inp)
    keras.Model(inp, [feats, logits]).save(d / "k.keras")
    # the same as a dict whose keys are not in sorted order: the graph's order and the reference's must still agree
    keras.Model(inp, {"logits": logits, "features": feats}).save(d / "kd.keras")
    return d


@pytest.fixture(scope="module")
def bundles(models, cli):
    made: dict[tuple[str, str], dict] = {}

    def get(model: str, target: str, *extra: str) -> tuple:
        key = (model, target, *extra)
        if key not in made:
            out = models / f"{model}-{target}{'-'.join(('',) + extra)}".replace("--", "-")
            r = cli("convert", models / model, "--target", target, "-o", out, "--data", models / "data.npz",
                    "--max-accuracy-drop", "1", "--cache", models / "cache", "--json", *extra)
            assert r.code == 0, r
            made[key] = (out, r.json()["manifest"])
        return made[key]

    return get


def _artifact_output_names(bundle, manifest) -> list[str]:
    """The output names the artifact itself carries (for TFLite: the manifest's names of its signature's outputs)."""
    art = next(a for a in manifest["artifacts"] if a["role"] == "model")
    if art["file"].endswith(".onnx"):
        import onnx

        return [o.name for o in onnx.load(str(bundle / art["file"])).graph.output]
    if art["file"].endswith(".xml"):
        import openvino as ov

        return [sorted(o.get_names())[0] for o in ov.Core().read_model(str(bundle / art["file"])).outputs]
    mapping = art["runner_options"]["tensor_names"]
    from edgeconv.runners.litert import signature_io

    have = {d["name"] for d in signature_io(bundle / art["file"])[1]}
    return [n for n in NAMES if mapping[n] in have]


@pytest.mark.parametrize("model,target", [("a.pt2", "onnx"), ("a.pt2", "intel-cpu"), ("a.pt2", "litert-cpu"),
                                          ("k.keras", "onnx"), ("k.keras", "intel-cpu"), ("k.keras", "litert-cpu"),
                                          ("kd.keras", "onnx")])
def test_names_are_kept_and_accuracy_is_on_the_logits(cli, models, bundles, model, target):
    bundle, m = bundles(model, target)
    assert [o["name"] for o in m["outputs"]] == NAMES
    assert [o["shape"][-1] for o in m["outputs"]] == [16, 10]
    assert _artifact_output_names(bundle, m) == NAMES
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert (acc["output"], acc["output_chosen_by"]) == ("logits", "its name")
    assert m["source_accuracy"]["output"] == "logits" and acc["source"]["top1"] == acc["artifact"]["top1"]
    r = cli("validate", bundle, "--data", models / "data.npz", "--runs", "3", "--warmup", "1", "--json")
    assert r.code == 0, r
    rep = r.json()
    assert [o["name"] for o in rep["parity"]["outputs"]] == NAMES and rep["parity"]["ok"]
    assert (rep["accuracy"]["output"], rep["accuracy"]["output_chosen_by"]) == ("logits", "its name, as at convert time")
    assert rep["accuracy"]["drop_points"] == 0.0


def test_score_output_picks_another_output_and_says_so(cli, models, bundles):
    bundle, m = bundles("a.pt2", "onnx")
    _, m_feat = bundles("a.pt2", "onnx", "--score-output", "features")
    acc = next(c for c in m_feat["checks"] if c["kind"] == "accuracy")
    assert (acc["output"], acc["output_chosen_by"]) == ("features", "--score-output")
    logits_top1 = next(c for c in m["checks"] if c["kind"] == "accuracy")["artifact"]["top1"]
    assert logits_top1 == 0.99 and acc["artifact"]["top1"] < 0.5  # the features are no class scores
    r = cli("convert", models / "a.pt2", "--target", "onnx", "-o", models / "bad", "--data", models / "data.npz",
            "--score-output", "probs", "--cache", models / "cache")
    assert r.code == 2 and "--score-output probs: the model's outputs are features, logits" in " ".join(r.stderr.split())
    # at validate time: the same flag, the source measured now on that output
    r = cli("validate", bundle, "--data", models / "data.npz", "--source", models / "a.pt2", "--score-output", "features",
            "--runs", "3", "--json")
    assert r.code == 0, r
    rep = r.json()["accuracy"]
    assert (rep["output"], rep["output_chosen_by"], rep["source"]["output"]) == ("features", "--score-output", "features")
    assert rep["drop_points"] == 0.0 and rep["artifact"]["top1"] == acc["artifact"]["top1"]


def test_validate_passes_a_drop_of_exactly_the_budget(cli, models, bundles):
    """The source (b.pt2) gets 100 of 100, the artifact (a.pt2's) 99: a drop of 1 point, at --max-accuracy-drop 1."""
    bundle, _ = bundles("a.pt2", "onnx")
    args = ["validate", bundle, "--data", models / "data.npz", "--source", models / "b.pt2", "--runs", "3"]
    r = cli(*args, "--max-accuracy-drop", "1", "--json")
    assert r.code == 0, r
    budget = next(b for b in r.json()["budgets"] if b["name"] == "max_accuracy_drop_points")
    assert budget["ok"] and budget["value"] == 1.0
    assert "100 of 100 items correct (source) vs 99 (artifact): drop 1 item(s) = 1 point(s) <= budget 1.0" in budget["compared"]
    r = cli(*args, "--max-accuracy-drop", "0.99")
    assert r.code == 1, r
    text = " ".join(r.stdout.split())
    assert "drop 1 item(s) = 1 point(s) > budget 0.99 points" in text
    assert "accuracy on output logits, chosen by its name, as at convert time" in text
    assert json.loads((bundle / "validation.json").read_text())["accuracy"]["output"] == "logits"


def test_a_device_runner_that_cannot_read_score_output_is_refused_not_sent_a_smaller_request():
    from edgeconv.errors import MissingDependency
    from edgeconv.remote.protocol import Plan

    old = Plan(False, "edgeconv_runner.pyz", 2)
    assert "score_output" not in old.fit({"score_output": None, "runs": 3})
    with pytest.raises(MissingDependency, match="--score-output needs protocol 3"):
        old.fit({"score_output": "logits", "runs": 3})
    assert Plan(False, "edgeconv_runner.pyz", 3).fit({"score_output": "logits"})["score_output"] == "logits"
