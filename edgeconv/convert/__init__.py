"""``edgeconv convert``: source → checked ONNX → target artifact(s) → bundle, with every check recorded.

The pipeline is a short sequence of named steps over one ``ConvertState`` (edgeconv/convert/steps.py lists them in
order); checks live in checks.py, the int8 guard in guard.py with its levers in levers.py, the manifest in manifest.py.
See docs/architecture.md.
"""

from __future__ import annotations

from edgeconv.bundle import BundleWriter
from edgeconv.convert.failures import converter_step
from edgeconv.convert.fp16_fallback import fallback_step
from edgeconv.convert.fp16_range import range_record, range_step
from edgeconv.convert.guard import guard_step
from edgeconv.convert.manifest import write
from edgeconv.convert.request import ConvertRequest, ConvertResult, default_output
from edgeconv.convert.steps import (
    CANONICAL_FP32,
    build,
    check_artifact,
    check_data,
    check_graph,
    check_onnx,
    export,
    load,
    plan,
    reference_feed,
    resolve_inputs,
    verdict,
)
from edgeconv.progress import Steps

# the steps that write into the bundle, in order (load and plan run before it exists)
BUNDLE_STEPS = (export, check_graph, check_onnx, range_step, build, fallback_step, check_artifact, check_data, range_record,
                guard_step, write)


def convert(req: ConvertRequest, steps: Steps | None = None) -> ConvertResult:
    st = plan(req, steps or Steps())
    load(st)
    with BundleWriter(st.out, req.force) as work:
        st.work = work
        for step in BUNDLE_STEPS:
            step(st)
    return verdict(st)


__all__ = ["BUNDLE_STEPS", "CANONICAL_FP32", "ConvertRequest", "ConvertResult", "convert", "converter_step", "default_output",
           "reference_feed", "resolve_inputs"]
