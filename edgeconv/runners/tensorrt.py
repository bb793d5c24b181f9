"""TensorRT runner (on the Jetson): the core's TensorRtBackend behind edgeconv's runner interface.

Before loading an engine it compares the TensorRT version and compute capability recorded at build time with
this device's, and refuses a mismatch in plain words (exit 3). Device memory goes through cuda-python.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeconv.core.backends.tensorrt import TensorRtBackend
from edgeconv.errors import MissingDependency
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec


class TensorRtRunner(Runner):
    runtime = "tensorrt"
    accepted_options = ("built_on",)

    def load(self) -> None:
        try:
            self.backend = TensorRtBackend(self.artifact, built_on=self.options.get("built_on"))
        except MissingDependency as exc:
            raise MissingDependency(str(exc), hint="TensorRT engines run on the Jetson that built them") from exc
        self.inputs = [TensorSpec(e["name"], e["shape"], e["dtype"].name) for e in self.backend.inputs]
        self.outputs = [TensorSpec(e["name"], e["shape"], e["dtype"].name) for e in self.backend.outputs]

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        return self.backend.prepare(feed)

    def run(self, prepared: Any) -> list[np.ndarray]:
        out = self.backend.run(prepared)
        self.last_s = self.backend.last_s
        return out

    def info(self) -> dict[str, Any]:
        return self.backend.info()

    def close(self) -> None:
        self.backend.close()
