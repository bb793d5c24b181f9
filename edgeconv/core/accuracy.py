"""Accuracy on labelled data, and what unlabelled data can still say (finite outputs, agreement with the source's
predictions). See docs/architecture.md."""

import numpy as np

from .errors import BadInput


def classifier_output(outputs):
    """Index of the first output that looks like class scores: shape (N, C) with C > 1."""
    for i, o in enumerate(outputs):
        if o.ndim == 2 and o.shape[1] > 1:
            return i
    return None


def topk_accuracy(scores, y):
    """Top-1 (and top-5 where there are 5 classes or more) of class scores against integer labels."""
    if scores.shape[1] <= int(y.max()):
        raise BadInput("labels go up to %d but the model has %d classes" % (int(y.max()), scores.shape[1]))
    order = np.argsort(-scores, axis=1)
    out = {"top1": float((order[:, 0] == y).mean())}
    if scores.shape[1] >= 5:
        out["top5"] = float((order[:, :5] == y[:, None]).any(axis=1).mean())
    return out


def source_accuracy(manifest, record, request):
    """The source model's accuracy on this data: measured at validate time (``--source``, sent in the request),
    else the one recorded at convert time when it was measured on the same file (same sha256)."""
    if request.get("source_accuracy"):
        return request["source_accuracy"]
    recorded = manifest.get("source_accuracy")
    if recorded and recorded.get("sha256") == record["sha256"]:
        return dict(recorded, measured_with="%s (recorded at convert time)" % recorded.get("measured_with"))
    return None


def outputs_on_data(out, record, request):
    """Unlabelled --data: the artifact on every item. Outputs must be finite; with class scores, how often the
    top-1 class agrees with the source's (``--source``: its predictions were computed on the host and sent)."""
    res = {"data": record, "finite": bool(all(np.isfinite(o).all() for o in out if o.dtype.kind == "f")),
           "note": "no labels: accuracy not measured"}
    idx = classifier_output(out)
    src = request.get("source_predictions")
    if idx is not None:
        top1 = out[idx].argmax(1)
        res["classes_predicted"] = int(len(np.unique(top1)))
        if src is not None:
            if len(src) != len(top1):
                raise BadInput("the source's predictions cover %d items, the data has %d" % (len(src), len(top1)))
            res["top1_agreement"] = float((np.asarray(src) == top1).mean())
            res["note"] = "no labels: top-1 agreement with the source instead of accuracy"
    return res
