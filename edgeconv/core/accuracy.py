"""Accuracy on labelled data, and what unlabelled data can still say (finite outputs, agreement with the source's
predictions); which output is scored; the accuracy budget. See docs/architecture.md."""

import re

import numpy as np

from .errors import BadInput

# An accuracy drop is within its budget up to this many points: the drop is a difference of two fractions of the same
# count, and 1 miss in 100 computes to 1.0000000000000142 points in floats, which must pass --max-accuracy-drop 1.
BUDGET_TOLERANCE_POINTS = 1e-9
# Output names that say "class scores" (whole words of the name: ``logits``, ``class_scores``, ``probs``).
SCORE_WORDS = ("logits", "logit", "scores", "score", "probs", "probabilities", "predictions", "classes")


def classifier_output(outputs):
    """Index of the first output that looks like class scores: shape (N, C) with C > 1."""
    for i, o in enumerate(outputs):
        if o.ndim == 2 and o.shape[1] > 1:
            return i
    return None


def score_output(names, outputs, labels=None, wanted=None, wanted_by="--score-output"):
    """``(index, chosen_by)`` of the output accuracy is computed on, or ``(None, None)`` when no output is shaped
    (N, classes): the output named ``wanted`` (``--score-output``); else the first (N, C) output whose name says class
    scores (``logits``, ``scores``, ``probs`` …); else, with labels, the first (N, C) output with C > the largest
    label; else the first (N, C) output. ``wanted_by``: what named ``wanted``, for the report."""
    names = list(names)
    if len(names) != len(outputs):  # positional names missing: the outputs' indices stand for them
        names = ["output_%d" % i for i in range(len(outputs))]
    shaped = [i for i, o in enumerate(outputs) if o.ndim == 2 and o.shape[1] > 1]
    if wanted:
        if wanted not in names:
            raise BadInput("--score-output %s: the model's outputs are %s" % (wanted, ", ".join(names)))
        i = names.index(wanted)
        if i not in shaped:
            raise BadInput("--score-output %s has shape %s; accuracy needs class scores of shape (N, classes)"
                           % (wanted, "x".join(str(d) for d in outputs[i].shape)))
        return i, wanted_by
    for i in shaped:
        if set(re.split(r"[^a-z]+", names[i].lower())) & set(SCORE_WORDS):
            return i, "its name"
    if labels is not None and len(labels) and len(shaped) > 1:
        top = int(np.max(labels))
        fits = [i for i in shaped if outputs[i].shape[1] > top]
        if fits:
            return fits[0], "the labels' range (classes 0-%d)" % top
    if shaped:
        return shaped[0], "the first output of shape (N, classes)"
    return None, None


def scored(names, index, chosen_by):
    """The report's fields naming the scored output."""
    return {"output": list(names)[index] if index < len(names) else "output_%d" % index, "output_chosen_by": chosen_by}


def topk_accuracy(scores, y):
    """Top-1 (and top-5 where there are 5 classes or more) of class scores against integer labels."""
    if scores.shape[1] <= int(y.max()):
        raise BadInput("labels go up to %d but the model has %d classes" % (int(y.max()), scores.shape[1]))
    order = np.argsort(-scores, axis=1)
    out = {"top1": float((order[:, 0] == y).mean())}
    if scores.shape[1] >= 5:
        out["top5"] = float((order[:, :5] == y[:, None]).any(axis=1).mean())
    return out


def drop_budget(source_top1, artifact_top1, count, limit):
    """The top-1 drop in points, and whether it is within ``limit`` (None: no budget). Both top-1 figures are fractions
    of the same ``count`` items: the drop is computed from the items' counts (1 miss in 100 is 1.0 point, not
    1.0000000000000142) and compared with BUDGET_TOLERANCE_POINTS; ``compared`` says what was compared."""
    src_hits, art_hits = int(round(source_top1 * count)), int(round(artifact_top1 * count))
    drop = 100.0 * (src_hits - art_hits) / count if count else 0.0
    out = {"drop_points": drop, "ok": True,
           "compared": "%d of %d items correct (source) vs %d (artifact): drop %d item(s) = %.6g point(s)"
                       % (src_hits, count, art_hits, src_hits - art_hits, drop)}
    if limit is not None:
        out["ok"] = bool(drop <= limit + BUDGET_TOLERANCE_POINTS)
        out["compared"] += " %s budget %s points (tolerance %g points)" % ("<=" if out["ok"] else ">", limit,
                                                                        BUDGET_TOLERANCE_POINTS)
    return out


def source_accuracy(manifest, record, request, output=None):
    """The source model's accuracy on this data: measured at validate time (``--source``, sent in the request),
    else the one recorded at convert time when it was measured on the same file (same sha256) and the same scored
    ``output`` (a record from before outputs were named counts as the one scored)."""
    if request.get("source_accuracy"):
        return request["source_accuracy"]
    recorded = manifest.get("source_accuracy")
    if recorded and recorded.get("sha256") == record["sha256"] and recorded.get("output", output) == output:
        return dict(recorded, measured_with="%s (recorded at convert time)" % recorded.get("measured_with"))
    return None


def recorded_score_output(manifest, request):
    """``(name, chosen_by)`` of the output to score: the request's (``--score-output``), else the one scored at convert
    time (the manifest's source accuracy says which), else ``(None, None)``: ``score_output`` then chooses by name,
    labels or shape."""
    if request.get("score_output"):
        return request["score_output"], "--score-output"
    recorded = manifest.get("source_accuracy") or {}
    if recorded.get("output"):
        return recorded["output"], "%s, as at convert time" % recorded.get("output_chosen_by")
    return None, None


def outputs_on_data(out, record, request, names=(), wanted=(None, None)):
    """Unlabelled --data: the artifact on every item. Outputs must be finite; with class scores, how often the
    top-1 class agrees with the source's (``--source``: its predictions were computed on the host and sent).
    ``wanted``: ``recorded_score_output``'s answer."""
    res = {"data": record, "finite": bool(all(np.isfinite(o).all() for o in out if o.dtype.kind == "f")),
           "note": "no labels: accuracy not measured"}
    idx, chosen_by = score_output(names, out, None, *wanted)
    src = request.get("source_predictions")
    if idx is not None:
        top1 = out[idx].argmax(1)
        res.update(scored(names, idx, chosen_by))
        res["classes_predicted"] = int(len(np.unique(top1)))
        if src is not None:
            if len(src) != len(top1):
                raise BadInput("the source's predictions cover %d items, the data has %d" % (len(src), len(top1)))
            res["top1_agreement"] = float((np.asarray(src) == top1).mean())
            res["note"] = "no labels: top-1 agreement with the source instead of accuracy"
    return res
