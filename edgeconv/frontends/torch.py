"""PyTorch sources → ONNX: TorchScript ``.pt``, ``torch.export`` ``.pt2``, state_dict + model class.

Loading never unpickles arbitrary objects by default: TorchScript and ``.pt2`` archives are loaded by their own
loaders, and a ``.pt/.pth`` pickle goes through ``torch.load(weights_only=True)``. A pickled whole module is
loaded only with ``--trust-pickle``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np

from edgeconv.core.text import first_line, shorten
from edgeconv.errors import BadInput, ConversionFailed
from edgeconv.frontends.base import ExportRecord, LoadOptions, SourceModel, import_user_module, source_output_names
from edgeconv.lazy import require, version_of
from edgeconv.specs import TensorSpec, guess_layout

DEFAULT_OPSET = 18
# The dynamo exporter writes opset 18 or newer (asked for older, it tries onnxscript's converter and, failing, keeps 18
# without saying so): an older opset is the canonical step's job (onnx.version_converter, recorded and checked).
DYNAMO_MIN_OPSET = 18
# The file a TorchScript archive may carry (``_extra_files``) to say what its inputs are.
SPEC_EXTRA_FILE = "edgeconv.json"

SAFE_FORMATS = (
    "PyTorch files edgeconv loads safely: (1) TorchScript (torch.jit.save), (2) a torch.export program "
    "(.pt2, torch.export.save), (3) a state_dict (.pt/.pth) together with --model-class pkg.module:Class "
    "(or path/to/file.py:Class). A pickled whole module runs code when loaded: use --trust-pickle only for a "
    "file you made yourself."
)


def _torch():
    return require("torch", why="to load PyTorch models")


def _load_class(ref: str):
    """``pkg.module:Class`` or ``path/to/file.py:Class``."""
    mod_name, sep, cls_name = ref.rpartition(":")
    if not sep or not mod_name or not cls_name:
        raise BadInput(f"--model-class {ref!r} is not of the form pkg.module:Class or path/to/file.py:Class")
    module = import_user_module(mod_name)
    try:
        return getattr(module, cls_name)
    except AttributeError:
        raise BadInput(f"{mod_name!r} has no attribute {cls_name!r} (from --model-class {ref})") from None


class _Captured:
    text = ""


@contextlib.contextmanager
def _native_stdout_kept():
    """File descriptor 1 sent to a temporary file while torch's C++ code runs: the TorchScript exporter prints the
    whole graph there when an op fails ("Torch IR graph at exception"), which would break ``--json`` output and is
    not the user's to read. Yields what was written (``.text``), for the failure's details."""
    import os
    import sys
    import tempfile

    got = _Captured()
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield got
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            got.text = tmp.read().decode(errors="replace")


@contextlib.contextmanager
def _quiet_logger(name: str):
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dict_return_as_tuple(torch, module) -> bool:
    """A traced model that returns a dict (Hugging Face models with ``return_dict=True``) ends its graph in
    ``prim::DictConstruct``, which the TorchScript ONNX exporter cannot export; return its values as a tuple, in
    the dict's order (what ``run`` gives for the reference)."""
    graph = module.graph
    ret = graph.return_node()
    node = ret.inputsAt(0).node()
    if node.kind() != "prim::DictConstruct":
        return False
    values = list(node.inputs())[1::2]
    tup = graph.create("prim::TupleConstruct", values, 1)
    tup.insertBefore(ret)
    tup.output().setType(torch._C.TupleType([v.type() for v in values]))
    ret.replaceInput(0, tup.output())
    torch._C._jit_pass_dce(graph)
    return True


def _keyword_inputs(program, n_inputs: int) -> list[str]:
    """The keyword names of a .pt2 program's inputs, from its call spec ``(args, kwargs)``: [] when every input is
    positional (or the kwargs are nested structures, which edgeconv's flat named inputs cannot stand for)."""
    try:
        _, kwargs_spec = program.call_spec.in_spec.children()
    except (AttributeError, ValueError, TypeError):
        return []
    if kwargs_spec.num_leaves == 0 or kwargs_spec.num_leaves > n_inputs or not all(c.is_leaf() for c in kwargs_spec.children()):
        return []
    return [str(k) for k in kwargs_spec.context]


class TorchSource(SourceModel):
    framework = "torch"
    frontend = "OnnxFromTorch"
    default_opset = DEFAULT_OPSET
    max_export_opset = 20  # the TorchScript exporter's newest; the dynamo exporter writes newer ones too
    layout_default = "NCHW"

    def __init__(self, path: Path, options: LoadOptions):
        super().__init__(path)
        self.module = None  # an nn.Module or ScriptModule, in eval mode
        self.program = None  # an ExportedProgram for .pt2
        # the inputs a .pt2 program was exported to take by keyword (torch.export.export(model, (), {"input_ids": …}),
        # as Hugging Face models usually are): the program refuses them positionally
        self.keywords: list[str] = []
        self.output_names: list[str] | None = None  # a dict's keys, once ``run`` has seen the model return one
        torch = _torch()
        if path.suffix == ".pt2":
            self._load_exported(torch)
        elif zipfile.is_zipfile(path) and self._is_torchscript(path):
            self._load_torchscript(torch)
        else:
            self._load_pickle(torch, options)

    # -- loading ---------------------------------------------------------------------------------------
    @staticmethod
    def _is_torchscript(path: Path) -> bool:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or n.split("/")[-2:-1] == ["code"] for n in z.namelist())

    def _load_exported(self, torch) -> None:
        self.format = "torch.export"
        self.shapes_baked = True
        try:
            try:
                with _quiet_logger("torch.export"):  # its warning about an unregistered type is handled below
                    self.program = torch.export.load(str(self.path))
            except RuntimeError:
                # An output (or input) of a class registered with torch's pytree by its library, e.g. transformers'
                # ModelOutput: the library registers it when imported, and the program names it.
                if not self._import_pytree_types():
                    raise
                self.program = torch.export.load(str(self.path))
        except Exception as exc:
            raise BadInput(
                f"{self.path} is not a readable torch.export program (.pt2): {type(exc).__name__}: {exc}",
                hint="re-save it with torch.export.save(torch.export.export(model, args), 'model.pt2')",
            ) from exc
        sig = self.program.graph_signature
        placeholders = {n.name: n for n in self.program.graph.nodes if n.op == "placeholder"}
        for name in sig.user_inputs:
            val = placeholders[name].meta.get("val")
            shape = [int(d) if isinstance(d, int) or str(d).isdigit() else str(d) for d in val.shape]
            dtype = str(val.dtype).replace("torch.", "")
            self.inputs.append(TensorSpec(name, shape, dtype, guess_layout(shape, self.layout_default)))
        self.keywords = _keyword_inputs(self.program, len(self.inputs))
        self.module = self.program.module()

    def _import_pytree_types(self) -> list[str]:
        """Import the installed modules that define the pytree node types a .pt2 program's signature names
        (``transformers.modeling_outputs.ImageClassifierOutput`` → ``transformers.modeling_outputs``). Only
        modules of installed packages are imported, never code from the file. Returns those imported."""
        import re

        names: set[str] = set()
        with zipfile.ZipFile(self.path) as z:
            for member in z.namelist():
                if member.endswith(".json") and "/models/" in member:
                    names |= set(re.findall(r'\\?"type\\?": \\?"([A-Za-z_][\w.]*\.[A-Za-z_]\w*)',
                                            z.read(member).decode(errors="replace")))
        imported, failed = [], []
        for name in sorted(names):
            module = name.rpartition(".")[0]
            top = module.split(".")[0]
            if top in ("builtins", "collections", "torch", "typing") or importlib.util.find_spec(top) is None:
                continue
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - an installed module's import may fail in any way; it is then not
                # the one that registers the type: the others are still tried, and the note says which one failed and why
                failed.append(f"{module} (installed) did not import: {type(exc).__name__}: {first_line(str(exc), 200)}")
                continue
            imported.append(module)
        self.notes.extend(f"imported {m} (installed) to read the program's output structure" for m in dict.fromkeys(imported))
        self.notes.extend(dict.fromkeys(failed))
        return imported

    def _load_torchscript(self, torch) -> None:
        self.format = "torchscript"
        extra = {SPEC_EXTRA_FILE: ""}
        try:
            self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise BadInput(f"{self.path} is not a readable TorchScript file: {type(exc).__name__}: {exc}") from exc
        self.module.eval()
        if extra[SPEC_EXTRA_FILE]:
            for d in json.loads(extra[SPEC_EXTRA_FILE])["inputs"]:
                self.inputs.append(TensorSpec.from_dict(d))
        else:
            names = [i.debugName().split(".")[0] for i in list(self.module.graph.inputs())[1:]]
            # TorchScript keeps no shapes or dtypes: they come from the user's data or --input-shape.
            self.inputs = [TensorSpec(n, [], None, None) for n in names]

    def _load_pickle(self, torch, options: LoadOptions) -> None:
        try:
            obj = torch.load(str(self.path), map_location="cpu", weights_only=True)
        except Exception as exc:
            if not options.trust_pickle:
                msg = str(exc)
                kind = "cannot be read as a weights-only checkpoint"
                if "Unsupported global" in msg or "weights_only" in msg:
                    kind = "is a pickle of Python objects, which would run code when loaded"
                raise BadInput(f"{self.path} {kind}.", hint=SAFE_FORMATS) from exc
            try:
                obj = torch.load(str(self.path), map_location="cpu", weights_only=False)
            except Exception as exc2:
                raise BadInput(f"{self.path} is not a readable PyTorch file: {type(exc2).__name__}: {exc2}") from exc2
        if isinstance(obj, torch.nn.Module):
            self.format = "torch-pickled-module"
            self.module = obj.eval()
        elif isinstance(obj, dict):
            state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
            if not options.model_class:
                raise BadInput(
                    f"{self.path} holds a state_dict (weights only); edgeconv needs the model class to build it.",
                    hint="add --model-class pkg.module:Class (or path/to/file.py:Class) and, if needed, --model-kwargs '{...}'",
                )
            cls = _load_class(options.model_class)
            try:
                module = cls(**options.model_kwargs)
                module.load_state_dict(state)
            except Exception as exc:
                raise BadInput(
                    f"the state_dict in {self.path} does not fit {options.model_class}: {type(exc).__name__}: {exc}",
                    hint="check --model-class and --model-kwargs",
                ) from exc
            self.format = "torch-state-dict"
            self.module = module.eval()
        else:
            raise BadInput(f"{self.path} holds a {type(obj).__name__}, not a model or state_dict.", hint=SAFE_FORMATS)
        if not self.inputs:
            import inspect

            params = list(inspect.signature(self.module.forward).parameters)
            self.inputs = [TensorSpec(n, [], None, None) for n in params if n not in ("self", "args", "kwargs")]

    def input_hint(self, name: str) -> str:
        """What the first layer with weights says the first input looks like (TorchScript keeps no shapes)."""
        names = [s.name for s in self.inputs]
        if not names or name != names[0] or self.module is None:
            return super().input_hint(name)
        for _, mod in self.module.named_modules():
            kind = getattr(mod, "original_name", type(mod).__name__)
            if kind in ("LSTM", "GRU", "RNN"):
                return f"1xTx{getattr(mod, 'input_size', 'F')} if batch_first, else Tx1xF (the first layer is an {kind})"
            w = getattr(mod, "weight", None)
            if w is None or not hasattr(w, "shape"):
                continue
            shape = list(w.shape)
            if kind in ("Embedding", "EmbeddingBag"):
                return "1xN:int64 (token ids; the first layer is an Embedding)"
            if kind == "Conv2d" and len(shape) == 4:
                return f"1x{shape[1] * getattr(mod, 'groups', 1)}xHxW (the first layer is a Conv2d)"
            if kind == "Conv1d" and len(shape) == 3:
                return f"1x{shape[1] * getattr(mod, 'groups', 1)}xN (the first layer is a Conv1d)"
            if kind == "Linear" and len(shape) == 2:
                return f"1x{shape[1]} (the first layer is a Linear)"
            break
        return super().input_hint(name)

    # -- running and exporting -------------------------------------------------------------------------
    def call_args(self, feed: dict[str, np.ndarray]) -> tuple[tuple, dict]:
        """The call's positional and keyword arguments (a .pt2 program's keyword inputs are the last ones, in order)."""
        torch = _torch()
        tensors = [torch.from_numpy(np.asarray(feed[s.name], order="C")) for s in self.inputs]
        n_pos = len(tensors) - len(self.keywords)
        return tuple(tensors[:n_pos]), dict(zip(self.keywords, tensors[n_pos:]))

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = _torch()
        args, kwargs = self.call_args(feed)
        with torch.inference_mode():
            out = self.module(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            out = (out,)
        elif isinstance(out, dict):  # Hugging Face's ModelOutput is one: its keys name the outputs on every target
            self.output_names = [str(k) for k in out]
            out = tuple(out.values())
        return [o.detach().cpu().numpy() for o in out]

    def export_onnx(self, dest: Path, *, inputs: list[TensorSpec], opset: int | None, dynamic_batch: bool) -> ExportRecord:
        torch = _torch()
        from edgeconv.specs import random_inputs

        example = random_inputs(inputs, batch=2 if dynamic_batch else 1)
        args, kwargs = self.call_args(example)
        n_out = len(self.run(example))
        names = [s.name for s in inputs]
        out_names = source_output_names(self.output_names, n_out, names)
        opset = opset or DEFAULT_OPSET
        if self.format == "torchscript":
            reason = "the source is a TorchScript module, which torch.export (the dynamo exporter) cannot trace"
            return self._export_torchscript(torch, dest, args, names, out_names, opset, dynamic_batch, reason, kwargs)
        require("onnxscript", why="by the dynamo ONNX exporter")
        dyn = {n: {0: torch.export.Dim.DYNAMIC} for n in names} if dynamic_batch else None
        model = self.program if (self.program is not None and not dynamic_batch) else self.module
        log = io.StringIO()
        dynamo_opset = max(opset, DYNAMO_MIN_OPSET)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, args, str(dest), kwargs=kwargs or None, dynamo=True, external_data=False, opset_version=dynamo_opset,
                    input_names=names, output_names=out_names, dynamic_shapes=dyn, verbose=False,
                )
            notes = [f"written at opset {dynamo_opset}, the dynamo exporter's oldest; the canonical step lowers it to {opset}"
                     ] if dynamo_opset > opset else []
            if model is self.program and any(not isinstance(d, int) for spec in self.inputs for d in spec.shape):
                # a program exported with dynamic dimensions keeps them in the graph: the resolved shapes go in,
                # so that the canonical step can fold the shape arithmetic (onnx2tf cannot convert what it leaves)
                import onnx

                from edgeconv.onnx_tools import set_input_shapes

                proto = onnx.load(str(dest))
                set_input_shapes(proto, inputs, dynamic_batch)
                onnx.save(proto, str(dest))
                notes.append("the program's dynamic dimensions fixed to "
                             + ", ".join(f"{s.name} {'x'.join(map(str, s.shape))}" for s in inputs) + " in the ONNX graph")
            return ExportRecord(exporter=f"torch.onnx dynamo (torch {torch.__version__})", opset=dynamo_opset, notes=notes)
        except Exception as exc:  # noqa: BLE001 - any dynamo failure falls back to the TorchScript exporter; the
            # reason goes into the export record (fallback_reason), and into the error if that exporter fails too
            reason = f"the dynamo exporter failed: {type(exc).__name__}: {first_line(str(exc), 300)}"
        return self._export_torchscript(torch, dest, args, names, out_names, opset, dynamic_batch, reason, kwargs)

    def _export_torchscript(self, torch, dest, args, names, out_names, opset, dynamic_batch, reason, kwargs=None) -> ExportRecord:
        axes = {n: {0: "batch"} for n in names + out_names} if dynamic_batch else None
        module = self.module
        if self.format == "torchscript":
            module = torch.jit.load(str(self.path), map_location="cpu").eval()  # a copy: the reference keeps the original
            _dict_return_as_tuple(torch, module)
        try:
            with warnings.catch_warnings(), _native_stdout_kept() as native:
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module, args, str(dest), kwargs=kwargs or None, dynamo=False, opset_version=opset,
                    input_names=names, output_names=out_names, dynamic_axes=axes,
                )
        except Exception as exc:
            hint = "run with --debug for the full traceback"
            if self.format == "torchscript":  # only the older exporter can read a TorchScript file
                hint = ("a TorchScript file can only go through the older TorchScript exporter; where you have the model's "
                        "code, save it with torch.export.save(torch.export.export(model, args), 'model.pt2'): the dynamo "
                        "exporter covers more (complex-valued STFT among them). " + hint)
            raise ConversionFailed(
                f"PyTorch → ONNX export failed with both exporters. {reason}. "
                f"TorchScript exporter: {type(exc).__name__}: {first_line(str(exc), 400)}",
                hint=hint, details=shorten(native.text, 3000, keep="tail") or None,
            ) from exc
        return ExportRecord(exporter=f"torch.onnx TorchScript (torch {torch.__version__})", opset=opset, fallback_reason=reason)

    def versions(self) -> dict[str, str | None]:
        return {"torch": version_of("torch"), "onnxscript": version_of("onnxscript")}
