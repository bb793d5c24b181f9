"""The command line: thin Typer commands. Each parses options, calls one library function and renders.

Library code raises typed errors (edgeconv.errors); only :func:`_handled` turns them into a message and an
exit code, with no traceback unless ``--debug``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeconv import __version__
from edgeconv.core.text import first_line
from edgeconv.errors import BadInput, EdgeconvError, InternalError
from edgeconv.remote.options import RemoteRequest, SshOptions

app = typer.Typer(
    name="edgeconv",
    help="Take a trained PyTorch or Keras model to edge hardware and prove it still works there.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}

# Shared options, defined once.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else there.")]
InputShapeOpt = Annotated[list[str], typer.Option("--input-shape", help="NAME=1x3x224x224 (repeatable; NAME=1x16:int64 also "
        "sets the dtype); a bare shape for a one-input model. Open dimensions are otherwise taken from --sample/--data/--calib.")]
ModelClassOpt = Annotated[str | None, typer.Option("--model-class", help="pkg.module:Class or path/to/file.py:Class for a "
        "state_dict; for a Keras model with custom layers, the module (path/to/file.py or pkg.module) that defines them.")]
ModelKwargsOpt = Annotated[str | None, typer.Option("--model-kwargs", help="JSON keyword arguments for --model-class.")]
TrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading pickled modules / Keras Lambda layers (runs "
        "code from the file).")]
AtolOpt = Annotated[list[str], typer.Option("--atol", help="Max abs error allowed: VALUE for every output or NAME=VALUE "
        "(repeatable).")]
ScoreOutputOpt = Annotated[str | None, typer.Option("--score-output", help="The output accuracy is computed on, by name "
        "(default: one named like logits/scores, else the one that fits the labels' range, else the first (N, classes)).")]


def _err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


BROKEN_PIPE_EXIT = 128 + 13  # SIGPIPE's exit status in a shell


def _stdout_closed() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _handled(json_flag: str | None = "as_json"):
    """Map edgeconv errors to a message and exit code; with --json, also an error document on stdout."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            as_json = bool(json_flag and kwargs.get(json_flag))
            interrupted = []
            _state["stdout"] = sys.stdout
            # With --json, stdout carries the JSON document only: whatever a library prints goes to stderr.
            quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
            try:
                with _sigint_recorded(interrupted), quiet:
                    return fn(*args, **kwargs)
            except KeyboardInterrupt:
                _interrupted(as_json)
                raise
            except typer.Exit:
                raise
            except BrokenPipeError:  # the reader went away (`edgeconv targets --json | head`): end as `cat` would
                _stdout_closed()
                raise typer.Exit(BROKEN_PIPE_EXIT) from None
            except EdgeconvError as exc:
                if interrupted:  # Ctrl-C inside native code (TensorFlow, torch) can surface as any error
                    _interrupted(as_json)
                if _state["debug"]:
                    raise
                _print_error(exc.message, exc.hint, exc.details, type(exc).__name__, exc.exit_code, as_json)
                raise typer.Exit(exc.exit_code) from None
            except Exception as exc:  # a bug, or a library failing in a way we did not foresee
                if interrupted:
                    _interrupted(as_json)
                if _state["debug"]:
                    raise
                code = InternalError.exit_code
                where = _write_traceback(exc)
                _print_error(f"internal error (a bug in edgeconv, not a failed check): {type(exc).__name__}: "
                             f"{first_line(str(exc))}",
                             f"the full traceback is in {where}; please report it with that file (or rerun with --debug)",
                             None, "InternalError", code, as_json)
                raise typer.Exit(code) from None

        return wrapper

    return deco


def _write_traceback(exc: BaseException) -> str:
    """Write the traceback of an internal error to a file and return its path (or say why it could not be)."""
    import datetime as dt
    import os
    import tempfile
    import traceback

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.gettempdir()) / f"edgeconv-crash-{stamp}-{os.getpid()}.txt"
    try:
        path.write_text(f"edgeconv {__version__}\n{' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(exc)))
    except OSError as err:
        return f"(not written: {err})"
    return str(path)


@contextlib.contextmanager
def _sigint_recorded(flag: list):
    """While a command runs, remember that Ctrl-C was pressed (then raise KeyboardInterrupt as usual)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        flag.append(signum)
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted(as_json: bool):
    if _state["debug"]:
        return  # let the original exception and its traceback through
    _print_error("interrupted; nothing was left half-written", None, None, "Interrupted", 130, as_json)
    # A library object that Ctrl-C cut off half-way through its constructor (TensorFlow's ApiDefMap while tf2onnx
    # imports it) fails again in its finalizer at exit, and Python prints that as "Exception ignored … Traceback":
    # after "interrupted", not the user's to read
    sys.unraisablehook = lambda unraisable: None
    raise typer.Exit(130) from None


def _print_error(message, hint, details, kind, code, as_json) -> None:
    from rich.markup import escape

    con = _err_console()  # soft_wrap: paths and messages stay whole, to copy and to grep
    con.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    if details:
        con.print(details, markup=False, soft_wrap=True)
    if hint:
        con.print(f"[dim]hint:[/] {escape(hint)}", soft_wrap=True)
    if as_json:
        _emit_json({"ok": False, "error": {"type": kind, "message": message, "hint": hint, "details": details,
                                           "exit_code": code}})


def _emit_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str), file=_state.get("stdout") or sys.stdout)


def _steps(as_json: bool):
    from edgeconv.progress import RichSteps, Steps

    return Steps() if as_json else RichSteps()


def _command_line(ctx: typer.Context) -> list[str]:
    """The command as it could be typed again: arguments, then every option that differs from its default."""
    parts = ["edgeconv", ctx.info_name or ""]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if p.param_type_name == "argument":
            parts.append(str(value))
        elif value not in (None, False, [], ()) and value != p.default:
            flag = p.opts[0]
            if value is True:
                parts.append(flag)
            else:
                for v in value if isinstance(value, (list, tuple)) else [value]:
                    parts += [flag, str(v)]
    return parts


def _exit_for_devices(devices: list[dict[str, Any]]) -> None:
    """Exit 1 if any device failed, or the shared exit code when all failed alike."""
    failures = [d for d in devices if not d["ok"]]
    if failures:
        codes = {d.get("exit_code", 1) for d in failures}
        raise typer.Exit(codes.pop() if len(failures) == len(devices) and len(codes) == 1 else 1)


def _on_devices(command: str, bundle: Path, ssh: SshOptions, as_json: bool, *, args: list[str] | None = None,
                request: dict[str, Any] | None = None) -> None:
    """`COMMAND BUNDLE --remote …`: run on each device over SSH, render one row per device, exit as
    ``_exit_for_devices`` says."""
    from edgeconv.remote.run import run_remote

    result = run_remote(RemoteRequest(bundle=bundle, remotes=ssh.devices(), ssh=ssh, command=command, request=request,
                                      args=args or []),
                        progress=None if as_json else _progress_line)
    if as_json:
        _emit_json(result)
    else:
        from edgeconv.render import render_remote

        render_remote(result)
    _exit_for_devices(result["devices"])


def _progress_line(line: str) -> None:
    _err_console().print(f"[dim]{line}[/]", markup=True, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        print(f"edgeconv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
            help="Show the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-paragraph errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show what the libraries print (TensorFlow, ONNX Runtime, "
            "torch …) after each step; convert always keeps it in the bundle's convert.log.")] = False,
) -> None:
    from edgeconv import quiet

    _state["debug"] = debug
    quiet.set_verbose(verbose)


def _load_options(model_class, model_kwargs, trust_pickle):
    from edgeconv.frontends import LoadOptions

    try:
        kwargs = json.loads(model_kwargs) if model_kwargs else {}
    except json.JSONDecodeError as exc:
        raise BadInput(f"--model-kwargs is not valid JSON: {exc}") from exc
    if not isinstance(kwargs, dict):
        raise BadInput("--model-kwargs must be a JSON object, e.g. '{\"width\": 16}'")
    return LoadOptions(model_class=model_class, model_kwargs=kwargs, trust_pickle=trust_pickle)


def _with_target_options(command: str):
    """Add the target options ``command`` takes (edgeconv/target_options.py) to the command's signature, each in its
    target's help panel; their values arrive in ``**target_options``."""
    import inspect

    from edgeconv.target_options import options_of

    def deco(fn):
        sig = inspect.signature(fn, eval_str=True)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        for opt in options_of(command):
            typ = list[opt.type] if opt.multiple else (bool if opt.type is bool else opt.type | None)
            info = typer.Option(opt.flag, help=f"{opt.help} ({', '.join(opt.backends)})", rich_help_panel=f"Target: {opt.panel}",
                                show_default=False)
            params.append(inspect.Parameter(opt.key, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[typ, info],
                                            default=[] if opt.multiple else opt.default))
        fn.__signature__ = sig.replace(parameters=params)
        return fn

    return deco



def _with_group(param: str, make):
    """An argument group, as Polygraphy's: ``make``'s parameters are Typer options, declared there once with their help
    panel and defaults. The decorated command gets them in place of its parameter ``param``, and receives there the one
    value ``make`` builds from them."""
    import inspect

    group = list(inspect.signature(make, eval_str=True).parameters.values())

    def deco(fn):
        sig = inspect.signature(fn, eval_str=True)
        kind = sig.parameters[param].kind
        params = [q for p in sig.parameters.values() for q in ([g.replace(kind=kind) for g in group] if p.name == param else [p])]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            kwargs[param] = make(**{g.name: kwargs.pop(g.name) for g in group})
            return fn(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)
        return wrapper

    return deco


_SSH = "SSH (--remote)"
_CALIB = "Calibration (int8)"


def _ssh_group(
    remotes: Annotated[list[str], typer.Option("--remote", help="Run on a device over SSH: user@host[:port] (repeatable; in "
            "parallel).", rich_help_panel=_SSH)] = [],  # noqa: B006
    hosts: Annotated[Path | None, typer.Option("--hosts", help="File with one user@host[:port] per line.",
            rich_help_panel=_SSH)] = None,
    identity: Annotated[Path | None, typer.Option("--identity", help="SSH private key (else your ssh config and agent).",
            rich_help_panel=_SSH)] = None,
    ssh_options: Annotated[list[str], typer.Option("--ssh-option", help="Passed to ssh as -o OPTION (repeatable).",
            rich_help_panel=_SSH)] = [],  # noqa: B006
    remote_python: Annotated[str, typer.Option("--remote-python", help="Python on the device (e.g. a venv's).",
            rich_help_panel=_SSH)] = SshOptions.remote_python,
    timeout: Annotated[float, typer.Option("--timeout", help="SSH connect/command timeout in seconds.",
            rich_help_panel=_SSH)] = SshOptions.timeout,
) -> SshOptions:
    """The SSH options of every command that runs on devices, as one SshOptions."""
    return SshOptions(remotes=list(remotes), hosts=hosts, identity=identity, ssh_options=list(ssh_options),
                      remote_python=remote_python, timeout=timeout)


def _calibration_group(
    calib: Annotated[str | None, typer.Option("--calib", help="int8 calibration data: .npz, .npy, a folder of images, or "
            "'random' (flagged).", rich_help_panel=_CALIB)] = None,
    calib_count: Annotated[int, typer.Option("--calib-count", help="Calibration samples to use (seeded subset).",
            rich_help_panel=_CALIB)] = 200,
    calib_size: Annotated[str | None, typer.Option("--calib-size", help="Images: resize to H,W (default: the model's size).",
            rich_help_panel=_CALIB)] = None,
    mean: Annotated[str | None, typer.Option("--mean", help="Images: per-channel mean after scaling, e.g. 0.485,0.456,0.406.",
            rich_help_panel=_CALIB)] = None,
    std: Annotated[str | None, typer.Option("--std", help="Images: per-channel std, e.g. 0.229,0.224,0.225.",
            rich_help_panel=_CALIB)] = None,
    scale: Annotated[float, typer.Option("--scale", help="Images: multiply pixel values (0-255) by this first.",
            rich_help_panel=_CALIB)] = 1 / 255.0,
    channels: Annotated[str, typer.Option("--channels", help="Images: rgb or bgr.", rich_help_panel=_CALIB)] = "rgb",
    calib_layout: Annotated[str | None, typer.Option("--calib-layout", help="Images: NCHW or NHWC (default: the input's layout).",
            rich_help_panel=_CALIB)] = None,
):
    """convert's int8 calibration options, as one CalibrationRequest (None without --calib)."""
    if calib is None:
        return None
    from edgeconv.calibration import CalibrationRequest, Preprocess, parse_floats

    size = parse_floats(calib_size, "--calib-size")
    if channels not in ("rgb", "bgr"):
        raise BadInput(f"--channels must be rgb or bgr, not {channels!r}")
    pp = Preprocess(size=tuple(int(v) for v in size) if size else None, scale=scale,
                    mean=parse_floats(mean, "--mean") or (0.0,), std=parse_floats(std, "--std") or (1.0,),
                    channels=channels, layout=calib_layout)
    return CalibrationRequest(source=calib, count=calib_count, preprocess=pp)


_TIMING = "Latency: timing and stability"


def _timing_group(
    runs: Annotated[int, typer.Option("--runs", help="Timed runs (at least; see --min-seconds).",
            rich_help_panel=_TIMING)] = 100,
    min_seconds: Annotated[float, typer.Option("--min-seconds", help="Time for at least this long as well as --runs (trtexec: "
            "3 s; 1 s keeps CI fast, and the stability verdict says when it was not enough).", rich_help_panel=_TIMING)] = 1.0,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up runs (at least; see --warmup-seconds).",
            rich_help_panel=_TIMING)] = 10,
    warmup_seconds: Annotated[float, typer.Option("--warmup-seconds", help="Warm up for at least this long (trtexec: 200 ms).",
            rich_help_panel=_TIMING)] = 0.2,
    stable: Annotated[bool, typer.Option("--stable", help="Repeat rounds of timed runs until two successive rounds' p50 agree "
            "within 2% (30 s at most).", rich_help_panel=_TIMING)] = False,
    allow_unstable: Annotated[bool, typer.Option("--allow-unstable", help="Judge --max-latency-ms even on a measurement judged "
            "unstable (by default: exit 1, 'unstable, not a verdict').", rich_help_panel=_TIMING)] = False,
) -> dict[str, Any]:
    """validate's timing options (the defaults and why: edgeconv.core.stats), as ValidateRequest's fields."""
    return {"runs": runs, "min_seconds": min_seconds, "warmup": warmup, "warmup_seconds": warmup_seconds, "stable": stable,
            "allow_unstable": allow_unstable}


_with_timing = _with_group("timing", _timing_group)
_with_ssh_options = _with_group("ssh", _ssh_group)
_with_calibration = _with_group("calib", _calibration_group)
_BARE = "A bare model file (.tflite, .onnx, .xml+.bin, .param+.bin, .pte) instead of a bundle"


def _bare_file(fn):
    """The command takes a bare model file in place of its bundle: wrapped first (edgeconv/wrap.py) in a temporary
    directory, with --reference, --target and --input-shape for that file; the command's --source is its reference too."""
    import inspect

    sig = inspect.signature(fn, eval_str=True)
    extra = [
        inspect.Parameter("bare_reference", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Path | None, typer.Option("--reference", help="A bare file's reference inputs and outputs (.npz: input:NAME, "
                                      "output:NAME), checked for parity.", rich_help_panel=_BARE)]),
        inspect.Parameter("bare_target", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            str | None, typer.Option("--target", help="A bare file's device profile (default: its runtime's family).",
                                     rich_help_panel=_BARE)]),
        inspect.Parameter("bare_input_shape", inspect.Parameter.KEYWORD_ONLY, default=[], annotation=Annotated[
            list[str], typer.Option("--input-shape", help="A bare file's input shapes where it keeps none (ncnn): "
                                    "NAME=1x3x224x224.", rich_help_panel=_BARE)]),
    ]
    if "source" not in sig.parameters:  # debug: an ONNX --source is the float graph it compares the file with
        extra.append(inspect.Parameter("bare_source", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Path | None, typer.Option("--source", help="A bare file's source model (run here as its reference; an .onnx "
                                      "one is also the float graph debug compares it with).", rich_help_panel=_BARE)]))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from edgeconv.specs import parse_input_shapes
        from edgeconv.wrap import bare_bundle, is_model_file

        reference, target, shapes = (kwargs.pop(k) for k in ("bare_reference", "bare_target", "bare_input_shape"))
        given, source = kwargs["bundle"], kwargs.pop("bare_source", None)
        if source is not None and not is_model_file(given):
            raise BadInput(f"--source applies to a bare model file; {given} is a bundle (its float graph is inside)")
        load = _load_options(None, None, kwargs.get("trust_pickle", False))
        with bare_bundle(given, source=source or kwargs.get("source"), reference=reference, target=target,
                         input_shapes=parse_input_shapes(shapes), load=load, steps=_steps(kwargs.get("as_json", False))) as b:
            kwargs["bundle"] = b
            if is_model_file(given) and kwargs.get("data") is None and "source" in kwargs:
                kwargs["source"] = None  # the file's reference only: there is no --data to measure its accuracy on
            return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])
    return wrapper


@app.command()
@_handled()
@_with_calibration
@_with_target_options("convert")
def convert(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="Source model: .pt/.pth, .pt2, .keras, .h5, SavedModel dir, .onnx.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Device profile, family or path to a .toml (see `edgeconv "
            "targets`).")] = "onnx",
    precision: Annotated[str | None, typer.Option("--precision", "-p", help="fp32, fp16, int8 … as the target offers (default: "
            "the profile's, usually fp32).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Bundle directory to write.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at -o.")] = False,
    input_shape: InputShapeOpt = [],  # noqa: B006 (typer needs a literal default)
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Export with a dynamic batch axis.")] = False,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset to export.")] = None,
    model_class: ModelClassOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    sample: Annotated[Path | None, typer.Option("--sample", help="Reference inputs: .npy (one input) or .npz (x, or one array "
            "per input name); first axis = samples. Also gives the shapes the model leaves open (default: calibration data, "
            "else seeded random).")] = None,
    atol: AtolOpt = [],  # noqa: B006
    data: Annotated[Path | None, typer.Option("--data", help="Labelled .npz (x, y): source and artifact accuracy; or unlabelled "
            ".npy/.npz: the artifact's agreement with the source on it. Its shapes also fill the model's open "
            "dimensions.")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option("--max-accuracy-drop", help="Fail (exit 1) when top-1 drops more "
            "points than this on --data.")] = None,
    score_output: ScoreOutputOpt = None,
    calib: Any = None,  # the calibration group (_calibration_group): a CalibrationRequest, or None without --calib
    fallback: Annotated[str, typer.Option("--fallback", help="int8: auto pulls the guard's levers in order (other "
            "calibration methods, layers kept in float by their measured effect, 16-bit activations) until "
            "--max-accuracy-drop holds on labelled --data, else agreement on --data, else parity (none: never).",
            rich_help_panel="int8 guard")] = "none",
    max_float_layers: Annotated[int, typer.Option("--max-float-layers", help="int8 guard: the most layers --fallback auto may "
            "keep in float (exit 1 when no lever meets the goal).", rich_help_panel="int8 guard")] = 3,
    levers: Annotated[str | None, typer.Option("--levers", help="int8 guard: the levers to pull, in this order, comma-separated "
            "(default: calibration,packed-outputs,float-layers,int16-activations,qat).", rich_help_panel="int8 guard")] = None,
    finetune: Annotated[Path | None, typer.Option("--finetune", help="int8 guard, PyTorch source: a labelled training .npz "
            "(x, y) for quantization-aware fine-tuning (torchao PT2E), the last lever.", rich_help_panel="int8 guard")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="--finetune: epochs (default 3).",
            rich_help_panel="int8 guard")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="--finetune: Adam's learning rate (default 1e-4).",
            rich_help_panel="int8 guard")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Keep the source's facts and outputs and the canonical ONNX "
            "graph here, and take them from here when the same model (same bytes, options and edgeconv) is converted again, "
            "e.g. for another target (default: $EDGECONV_CACHE_DIR, else no cache).")] = None,
    as_json: JsonOpt = False,
    **target_options: Any,
) -> None:
    """Convert a model into a deployable, checked bundle for a target device."""
    from edgeconv.convert import ConvertRequest
    from edgeconv.convert import convert as run_convert
    from edgeconv.parity import parse_atol_overrides
    from edgeconv.specs import parse_input_dtypes, parse_input_shapes

    req = ConvertRequest(
        model=model, target=target, precision=precision, output=output, force=force, calib=calib,
        target_extra=target_options,
        input_shapes=parse_input_shapes(input_shape), input_dtypes=parse_input_dtypes(input_shape),
        dynamic_batch=dynamic_batch, opset=opset,
        load=_load_options(model_class, model_kwargs, trust_pickle), sample=sample,
        atol=parse_atol_overrides(atol), data=data, max_accuracy_drop=max_accuracy_drop, score_output=score_output,
        fallback=fallback, max_float_layers=max_float_layers, cache_dir=cache, command_line=_command_line(ctx),
        levers=[n.strip() for n in levers.split(",") if n.strip()] if levers is not None else None,
        finetune=finetune, epochs=epochs, lr=lr,
    )
    if model.suffix.lower() == ".tflite":  # taken as it is by the TFLite-family targets (edgeconv/wrap.py)
        from edgeconv.wrap import convert_given as run_convert
    result = run_convert(req, _steps(as_json))
    if as_json:
        _emit_json({"ok": True, "bundle": str(result.bundle), "manifest": result.manifest})
    else:
        from edgeconv.render import render_convert

        render_convert(result)


@app.command()
@_handled()
@_bare_file
@_with_ssh_options
@_with_timing
def validate(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory made by `edgeconv convert`.")],
    ssh: SshOptions,
    timing: dict[str, Any],
    data: Annotated[Path | None, typer.Option("--data", help="Labelled .npz (x, y) for accuracy.")] = None,
    source: Annotated[Path | None, typer.Option("--source",
            help="The source model, to measure its accuracy on --data now.")] = None,
    trust_pickle: TrustPickleOpt = False,
    max_memory_mb: Annotated[float | None, typer.Option("--max-memory-mb", help="Budget: peak resident memory of the run, "
            "MB.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Runtime threads (default: the runtime's own).")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option("--max-accuracy-drop", help="Budget: top-1 drop in points vs the "
            "source.")] = None,
    score_output: ScoreOutputOpt = None,
    max_latency_ms: Annotated[float | None, typer.Option("--max-latency-ms", help="Budget: p50 latency in ms.")] = None,
    atol: AtolOpt = [],  # noqa: B006
    report: Annotated[Path | None, typer.Option("--report",
            help="Where to write the report (default: BUNDLE/validation.json).")] = None,
    device: Annotated[str | None, typer.Option("--device",
            help="OpenVINO device: CPU, GPU, NPU, AUTO (default: the profile's).")] = None,
    inference_precision: Annotated[str | None, typer.Option("--inference-precision", help="OpenVINO: f32 (default, for parity) "
            "or native (the device's default, e.g. bf16).")] = None,
    performance_hint: Annotated[str | None, typer.Option("--performance-hint", help="OpenVINO: latency (default) or throughput "
            "(adds an async-queue throughput figure).")] = None,
    io_layout: Annotated[str, typer.Option("--io-layout", help="TFLite: source (default: data in the source model's layout) or "
            "nhwc (data in the artifact's own layout).")] = "source",
    request: Annotated[Path | None, typer.Option("--request", help="Run this request.json (what --remote sends a device) "
            "instead of the options above.")] = None,
    stream: Annotated[int | None, typer.Option("--stream", help="Stateful models: run N consecutive chunks, each step's "
            "output state fed to the next, every step compared with the source's.")] = None,
    state_map: Annotated[list[str], typer.Option("--state-map", help="With --stream: STATE_INPUT=NEXT_STATE_OUTPUT "
            "(repeatable; default: read from the names, state→stateN, h0→hn).")] = [],  # noqa: B006
    chunk_ms: Annotated[float | None, typer.Option("--chunk-ms", help="With --stream: a chunk's duration in ms, for the "
            "real-time factor (chunk duration / latency).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a bundle here or on devices (--remote): parity, accuracy, latency, budgets.

    One request, executed here or sent with the bundle to each device; a check or budget missed exits 1."""
    from edgeconv.parity import parse_atol_overrides
    from edgeconv.streaming import parse_state_map
    from edgeconv.validate import ValidateRequest, build_request, read_request, run_request

    req = ValidateRequest(
        bundle=bundle, data=data, source=source, trust_pickle=trust_pickle, threads=threads, **timing,
        max_accuracy_drop=max_accuracy_drop, max_latency_ms=max_latency_ms, report=report,
        atol=parse_atol_overrides(atol), device=device, inference_precision=inference_precision,
        performance_hint=performance_hint, io_layout=io_layout, score_output=score_output, max_memory_mb=max_memory_mb,
        stream=stream, state_map=parse_state_map(state_map), chunk_ms=chunk_ms,
    )
    steps = _steps(as_json)
    if request is not None:
        if req.to_request() != ValidateRequest(bundle).to_request() or source is not None or ssh.given or stream is not None:
            raise BadInput("--request carries the run's options: pass it alone (with --report and --json at most)")
        result = run_request(bundle, read_request(request), report=report, steps=steps, base_dir=request.parent)
    elif ssh.given:
        _on_devices("validate", bundle, ssh, as_json, request=build_request(req, steps, check_data=True))
        return
    else:
        result = run_request(bundle, build_request(req, steps), report=report, steps=steps)
    if as_json:
        _emit_json(result)
    else:
        from edgeconv.render import render_validation

        render_validation(result)
    if not result["ok"]:
        raise typer.Exit(1)


@app.command()
@_handled()
@_bare_file
@_with_ssh_options
def profile(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory made by `edgeconv convert`.")],
    ssh: SshOptions,
    batch_sizes: Annotated[str | None, typer.Option("--batch-sizes", help="Comma-separated, e.g. 1,2,4,8 (default: powers of "
            "two up to the bundle's max).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Runtime threads.")] = None,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs per batch size (at least).")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up runs per batch size.")] = 5,
    min_time: Annotated[float | None, typer.Option("--min-time", help="Also run each batch size for at least this many "
            "seconds (default 0.5 s per batch size for a sweep; trtexec times 3 s, a sweep has several sizes).")] = None,
    max_memory_mb: Annotated[float | None, typer.Option("--max-memory-mb", help="Budget: peak resident memory of each batch "
            "size, MB (exit 1 when one exceeds it).")] = None,
    budget_ms: Annotated[float | None, typer.Option("--budget-ms", help="Latency budget per batch (p99) for the best-batch "
            "answer.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG: throughput and p50/p99 against batch size.")] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write the table as CSV.")] = None,
    report_file: Annotated[Path | None, typer.Option("--report", help="Where to write the report (default: BUNDLE/profile.json, "
            "with --layers BUNDLE/profile_layers.json).")] = None,
    layers: Annotated[bool, typer.Option("--layers", help="Time each layer with the runtime's own profiler (ONNX Runtime, "
            "OpenVINO) at one batch size, instead of the sweep.")] = False,
    top: Annotated[int, typer.Option("--top",
            help="--layers: the slowest N layers in the table (--json and --csv have all).")] = 20,
    request: Annotated[Path | None, typer.Option("--request", help="Run this request.json (what --remote sends a device) "
            "instead of the options above.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Latency and throughput per batch size: the knee, the best batch under a budget.

    Outputs that depend on the batch are flagged. With --layers, each layer's time from the runtime's own profiler
    against the end-to-end p50."""
    from edgeconv.core.request import REQUEST_SCHEMA, complete_request
    from edgeconv.core.stats import PROFILE_MIN_SECONDS
    from edgeconv.profile import ProfileRequest
    from edgeconv.profile import profile as run_profile
    from edgeconv.validate import read_request

    # one request, as validate's: run here, or sent with the bundle to each device
    req = {"schema": REQUEST_SCHEMA, "command": "profile", "batch_sizes": _batch_sizes(batch_sizes), "threads": threads,
           "runs": runs, "warmup": warmup, "min_time_s": min_time, "budget_ms": budget_ms, "layers": layers,
           "max_memory_mb": max_memory_mb}
    if request is not None:
        if ssh.given or layers or any(v is not None for v in (batch_sizes, threads, min_time, budget_ms, max_memory_mb)):
            raise BadInput("--request carries the run's options: pass it alone (with --plot, --csv and --json at most)")
        req = read_request(request)
    elif min_time is None and not layers:
        req["min_time_s"] = PROFILE_MIN_SECONDS
    req = complete_request(req)
    if req["command"] != "profile":
        raise BadInput(f"a {req['command']} request given to profile")
    if ssh.given:
        _on_devices("profile", bundle, ssh, as_json, request=req)
        return
    report = run_profile(ProfileRequest(bundle=bundle, batch_sizes=req["batch_sizes"], threads=req["threads"], runs=req["runs"],
                                        warmup=req["warmup"], min_time_s=req["min_time_s"], budget_ms=req["budget_ms"], plot=plot,
                                        csv=csv_file, report=report_file, layers=req["layers"], where=req["where"],
                                        max_memory_mb=req["max_memory_mb"]),
                         _steps(as_json))
    if as_json:
        _emit_json(report)
    elif "layers" in report:
        from edgeconv.render import render_profile_layers

        render_profile_layers(report, top)
    else:
        from edgeconv.render import render_profile

        render_profile(report)
    if not report.get("ok", True):
        raise typer.Exit(1)


def _batch_sizes(text: str | None) -> list[int] | None:
    """--batch-sizes 1,2,4: sorted, each once; None when not given."""
    if not text:
        return None
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise BadInput(f"--batch-sizes {text!r} is not a comma-separated list of whole numbers") from None
    if not sizes or sizes[0] < 1:
        raise BadInput("--batch-sizes must be positive whole numbers")
    return sizes


@app.command("compare")
@_handled()
def compare_cmd(
    model: Annotated[Path, typer.Argument(help="Source model.")],
    targets: Annotated[str | None, typer.Option("--targets", help="Comma-separated targets (families or profiles); default: "
            "every family edgeconv has.")] = None,
    precisions: Annotated[str, typer.Option("--precisions",
            help="Comma-separated precisions; each target gets those it offers.")] = "fp32,fp16,int8",
    calib: Annotated[str | None, typer.Option("--calib", help="Calibration data for int8 (.npz/.npy/image folder).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Labelled .npz (x, y) for accuracy.")] = None,
    input_shape: InputShapeOpt = [],  # noqa: B006
    model_class: ModelClassOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs per artifact.")] = 50,
    threads: Annotated[int | None, typer.Option("--threads", help="Runtime threads.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out-dir",
            help="Keep every bundle here (default: a temporary folder).")] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write the table as CSV.")] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Show every column, however wide the terminal.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Convert to every target and precision buildable here, validate each, one table."""
    from edgeconv.calibration import CalibrationRequest
    from edgeconv.compare import DEFAULT_TARGETS, CompareRequest, compare, write_csv
    from edgeconv.specs import parse_input_shapes

    result = compare(CompareRequest(
        model=model, targets=[t.strip() for t in (targets or ",".join(DEFAULT_TARGETS)).split(",") if t.strip()],
        precisions=[p.strip() for p in precisions.split(",") if p.strip()],
        calib=CalibrationRequest(calib) if calib else None, data=data, input_shapes=parse_input_shapes(input_shape),
        load=_load_options(model_class, model_kwargs, trust_pickle), runs=runs, threads=threads, out_dir=out_dir,
    ), _steps(as_json))
    if csv_file:
        write_csv(csv_file, result["rows"])
    if as_json:
        _emit_json(result)
    else:
        from edgeconv.render import render_compare

        render_compare(result, wide=wide)
    if result.get("interrupted"):  # Ctrl-C: the finished rows are shown above; the run itself did not finish
        raise typer.Exit(130)


@app.command("sweep")
@_handled()
def sweep_cmd(
    models: Annotated[list[Path] | None, typer.Argument(help="Source models (or --plan).")] = None,
    targets: Annotated[str | None, typer.Option("--targets", help="Comma-separated targets (profiles or families); "
            "T@DEVICE validates on a plan's device.")] = None,
    precisions: Annotated[str | None, typer.Option("--precisions", help="Comma-separated precisions (default: each "
            "profile's own).")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="A TOML plan: models with their own data, calibration, "
            "options and targets, and devices (see docs/architecture.md, Sweeps).")] = None,
    calib: Annotated[Path | None, typer.Option("--calib", help="Calibration data for the int8 cells.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Labelled .npz (x, y) for accuracy.")] = None,
    sample: Annotated[Path | None, typer.Option("--sample", help="Reference inputs (.npz/.npy).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory: results.json, matrix.md, results.html; "
            "rerunning into it skips the cells already done.")] = Path("sweep-run"),
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Cells at once on this machine.")] = 1,
    ray: Annotated[str | None, typer.Option("--ray", help="Run each cell as a task on this Ray cluster (auto: the running "
            "one; needs edgeconv[ray]).")] = None,
    keep_bundles: Annotated[bool, typer.Option("--keep-bundles", help="Keep every cell's bundle (default: its reports "
            "only).")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for each convert and each validate.")] = 1800.0,
    warm_workers: Annotated[bool, typer.Option("--warm-workers/--fresh-processes", help="Local pool: each job runs its "
            "cells' commands in one long-lived edgeconv process (the default: imports paid once per --recycle commands, "
            "not twice per cell; same exit codes, JSON and logs), or each command in a fresh `python -m edgeconv` (a "
            "lone command's memory figures, without the imports earlier commands left). Ray tasks always run fresh "
            "processes.")] = True,
    recycle: Annotated[int, typer.Option("--recycle", min=1, help="Commands per warm worker before a fresh one.")] = 40,
    baseline: Annotated[Path | None, typer.Option("--baseline", help="An earlier results.json: list what changed, exit 1 on "
            "a regression.")] = None,
    accuracy_tolerance: Annotated[float, typer.Option("--accuracy-tolerance", help="--baseline: top-1 points a cell may "
            "lose.")] = 0.5,
    latency_tolerance: Annotated[float, typer.Option("--latency-tolerance", help="--baseline: share a p50 may grow "
            "(and it must leave both runs' intervals).")] = 0.10,
    as_json: JsonOpt = False,
) -> None:
    """Many models × many targets: convert + validate each cell, here or on Ray; one matrix; a CI gate."""
    from edgeconv.sweep import SweepRequest, run_sweep

    def split(text: str | None) -> list[str]:
        return [t.strip() for t in (text or "").split(",") if t.strip()]

    result = run_sweep(SweepRequest(
        run_dir=output, models=list(models or []), targets=split(targets), precisions=split(precisions), plan=plan,
        data=data, calib=calib, sample=sample, jobs=jobs, ray=ray, keep_bundles=keep_bundles, timeout=timeout,
        warm_workers=warm_workers, recycle=recycle, baseline=baseline, accuracy_tolerance=accuracy_tolerance,
        latency_tolerance=latency_tolerance,
    ), progress=None if as_json else _progress_line)
    if as_json:
        _emit_json(result)
    else:
        from edgeconv.sweep.render import render_sweep

        render_sweep(result)
    if result["baseline"] and result["baseline"]["regressions"]:
        raise typer.Exit(1)


@app.command("debug")
@_handled()
@_bare_file
def debug_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory made by `edgeconv convert` (a failed int8 bundle too).")],
    data: Annotated[Path, typer.Option("--data", help="Real inputs (.npz x[, y] or .npy) to run both graphs on.")],
    samples: Annotated[int, typer.Option("--samples", help="How many samples of --data to run.")] = 32,
    threshold_db: Annotated[float | None, typer.Option("--threshold-db", help="A layer diverges when its SNR, and the SNR its "
            "own error leaves, fall below this (default: 20 dB int8, 40 dB fp16, 60 dB fp32).")] = None,
    top: Annotated[int, typer.Option("--top", help="Rows in the worst-layers table.")] = 10,
    reduce_dir: Annotated[Path | None, typer.Option("--reduce", help="Write the smallest piece of the canonical ONNX graph "
            "that still fails on the bundle's backend into this folder, with its inputs and a command reproducing it.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Which layer loses the accuracy: the artifact and the fp32 ONNX graph layer by layer.

    Each layer is mapped to the PyTorch module / Keras layer it came from; the first diverging layer is marked."""
    from edgeconv.debug import DebugRequest, debug

    if reduce_dir is not None:  # edgeconv/debug/reduce.py
        from edgeconv.debug.reduce import reduce

        found = reduce(bundle, data, reduce_dir, min(samples, 8), threshold_db, _steps(as_json))
        if as_json:
            _emit_json(found)
        else:
            typer.echo(f"{found['nodes']} node(s) ending at {found['first_diverging']} still fail on {found['runtime']}: "
                       f"{found['dir']}\nreproduce: {found['command'] or found.get('note')}")
        return
    report = debug(DebugRequest(bundle=bundle, data=data, samples=samples, threshold_db=threshold_db), _steps(as_json))
    if as_json:
        _emit_json(report)
    else:
        from edgeconv.debug.render import render_debug

        render_debug(report, top=top)


@app.command("wrap")
@_handled()
def wrap_cmd(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="A model file edgeconv did not build: .tflite, .onnx, .xml (+ .bin), "
            ".param (+ .bin), .pte.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Bundle directory to write.")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Device profile (default: the file's runtime's "
            "family).")] = None,
    source: Annotated[Path | None, typer.Option("--source", help="The model the file was made from (any source edgeconv "
            "reads), run here on the same inputs: the reference for parity.")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="Reference inputs and outputs (.npz: input:NAME, "
            "output:NAME) for parity.")] = None,
    sample: Annotated[Path | None, typer.Option("--sample", help="Reference inputs (.npy/.npz; default: seeded random).")] = None,
    input_shape: InputShapeOpt = [],  # noqa: B006
    atol: AtolOpt = [],  # noqa: B006
    model_class: ModelClassOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at -o.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a bundle around a model file edgeconv did not build, so validate, profile and the device runner take it.

    The manifest says the file was given: its sha256, the runtime that opened it, its inputs and outputs read from it;
    with --source or --reference, parity is checked (exit 1 on a miss)."""
    from edgeconv.parity import parse_atol_overrides
    from edgeconv.specs import parse_input_shapes
    from edgeconv.wrap import WrapRequest, wrap

    result = wrap(WrapRequest(model, output, target=target, source=source, reference=reference, sample=sample,
                              input_shapes=parse_input_shapes(input_shape), load=_load_options(model_class, model_kwargs,
                                                                                              trust_pickle),
                              atol=parse_atol_overrides(atol), force=force, command_line=_command_line(ctx)), _steps(as_json))
    if as_json:
        _emit_json({"ok": result.ok, "bundle": str(result.bundle), "manifest": result.manifest})
    else:
        from edgeconv.render import render_convert

        render_convert(result)


@app.command("compress")
@_handled()
def compress_cmd(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="Source model: .pt2, a state_dict .pt/.pth with --model-class, a pickled module "
            "with --trust-pickle.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The compressed model to write (.pt2, a torch.export program "
            "`convert` takes).")],
    prune_channels: Annotated[float | None, typer.Option("--prune-channels", help="Structured: remove this fraction (0-1) of "
            "each group of coupled channels, by importance (Torch-Pruning DepGraph). Every runtime gets faster.",
            rich_help_panel="Compression")] = None,
    round_to: Annotated[int, typer.Option("--round-to", help="--prune-channels keeps a multiple of this many channels per layer "
            "(ONNX Runtime's x86 kernels work in blocks of 8; 1 keeps the exact ratio).", rich_help_panel="Compression")] = 8,
    sparsity: Annotated[float | None, typer.Option("--sparsity", help="Unstructured: zero this fraction (0-1) of conv/Linear "
            "weights by magnitude, iteratively with --finetune. Dense runtimes do not get faster; the zipped artifact gets "
            "smaller.", rich_help_panel="Compression")] = None,
    low_rank: Annotated[float | None, typer.Option("--low-rank", help="Split each Linear and 1x1 conv by truncated SVD: 0-1 "
            "keeps the rank holding that fraction of the layer's energy; a whole number >= 1 is a fixed rank.",
            rich_help_panel="Compression")] = None,
    keep_slower: Annotated[bool, typer.Option("--keep-slower", help="--low-rank: keep the splits that run slower on ONNX "
            "Runtime too (a smaller file for a device short of storage); they are still timed and reported.",
            rich_help_panel="Compression")] = False,
    finetune: Annotated[Path | None, typer.Option("--finetune", help="Labelled training .npz (x in the model's own layout, "
            "integer labels y): fine-tune with cross-entropy after compressing.", rich_help_panel="Fine-tuning")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Fine-tuning epochs (default 10).",
            rich_help_panel="Fine-tuning")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Fine-tuning learning rate, Adam (default 1e-3).",
            rich_help_panel="Fine-tuning")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Fine-tuning batch size (default 64).",
            rich_help_panel="Fine-tuning")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fine-tuning shuffles and initialisation.",
            rich_help_panel="Fine-tuning")] = 0,
    data: Annotated[Path | None, typer.Option("--data",
            help="Labelled .npz (x, y): top-1 before and after, on ONNX Runtime.")] = None,
    runs: Annotated[int, typer.Option("--runs", help="Timed ONNX Runtime runs per model (before/after interleaved).",
            rich_help_panel="Measurement")] = 100,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up runs per model and round.",
            rich_help_panel="Measurement")] = 10,
    threads: Annotated[int | None, typer.Option("--threads", help="ONNX Runtime threads (default: the runtime's own).",
            rich_help_panel="Measurement")] = None,
    input_shape: InputShapeOpt = [],  # noqa: B006
    model_class: ModelClassOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file at -o.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Prune and factorise a PyTorch model, fine-tune it, and measure before and after.

    Channels or weights are pruned; parameters, non-zeros, MACs, size, ONNX Runtime p50 and top-1 are measured before
    and after. Writes a .pt2 that `convert` takes."""
    from edgeconv.compress import CompressRequest, RichTrainingProgress, compress, render_report
    from edgeconv.specs import parse_input_dtypes, parse_input_shapes

    req = CompressRequest(
        model=model, output=output, prune_channels=prune_channels, round_to=round_to, sparsity=sparsity, low_rank=low_rank,
        keep_slower=keep_slower,
        finetune=finetune, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, data=data, runs=runs, warmup=warmup,
        threads=threads,
        input_shapes=parse_input_shapes(input_shape), input_dtypes=parse_input_dtypes(input_shape),
        load=_load_options(model_class, model_kwargs, trust_pickle), force=force, command_line=_command_line(ctx),
    )
    report = compress(req, _steps(as_json), None if as_json else RichTrainingProgress())
    if as_json:
        _emit_json(report)
    else:
        render_report(report)


@app.command()
@_handled()
def inspect(
    model: Annotated[Path, typer.Argument(help="Model file (.pt, .pt2, .keras, .h5, SavedModel dir, .onnx).")],
    input_shape: InputShapeOpt = [],  # noqa: B006
    sample: Annotated[Path | None, typer.Option("--sample", help="Sample inputs (.npy or .npz) whose shapes fill the model's "
            "open dimensions.")] = None,
    model_class: ModelClassOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a model's inputs, outputs, opset, ops, parameters and MACs."""
    from edgeconv.inspection import inspect_model
    from edgeconv.specs import parse_input_dtypes, parse_input_shapes

    info = inspect_model(model, input_shapes=parse_input_shapes(input_shape), input_dtypes=parse_input_dtypes(input_shape),
                         sample=sample, load=_load_options(model_class, model_kwargs, trust_pickle))
    if as_json:
        _emit_json(info)
    else:
        from edgeconv.render import render_inspect

        render_inspect(info)


@app.command()
@_handled()
def targets(
    wide: Annotated[bool, typer.Option("--wide", help="Every column on every row: backend, description, where it runs.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List device profiles and whether their toolchain and runtime are available here."""
    from edgeconv.profiles import all_profiles
    from edgeconv.targets import BACKENDS

    rows = []
    for p in all_profiles().values():
        avail = p.availability()
        if p.backend not in BACKENDS:
            avail = {**avail, "available": False, "backend_missing": True}
        rows.append({"name": p.name, "family": p.family, "default_for_family": p.default_for_family, "backend": p.backend,
                     "runner": p.runner, "precisions": p.precisions, "description": p.description,
                     "file": str(p.path), **avail})
    if as_json:
        _emit_json({"targets": rows})
    else:
        from edgeconv.render import render_targets

        render_targets(rows, wide=wide)


@app.command()
@_handled()
@_with_ssh_options
@_with_target_options("build")
def build(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory whose device format is built here (TensorRT engine).")],
    ssh: SshOptions,
    as_json: JsonOpt = False,
    **target_options: Any,
) -> None:
    """Build the device-specific artifact on the device (a TensorRT engine on a Jetson).

    The manifest records the device it was built on."""
    from edgeconv.build import build_bundle
    from edgeconv.target_options import as_arguments

    if ssh.given:
        if len(ssh.devices()) > 1:
            raise BadInput("build --remote takes one device: the engine it brings back into the bundle belongs to that "
                           "device's GPU and TensorRT; build each device from its own copy of the bundle")
        _on_devices("build", bundle, ssh, as_json, args=as_arguments(target_options))
        return
    record = build_bundle(bundle, **target_options, steps=_steps(as_json))
    if as_json:
        _emit_json({"ok": True, "build": record})
    elif record["format"] == "edgetpu-compile":
        from edgeconv.render import console

        rep = record["report"]
        console.print(f"compiled {record['file']}: {rep['mapped_ops']} of {rep['table_ops']} ops on the Edge TPU; on-chip "
                      f"{rep['on_chip_used']}, off-chip {rep['off_chip_used']}"
                      + (f"\n[yellow]{record['prediction_mismatch']}[/]" if record.get("prediction_mismatch") else ""))
    else:
        from edgeconv.render import console

        on = record["built_on"]
        console.print(f"built {record['engine']} with TensorRT {on['tensorrt']} for compute {on['compute_capability']} "
                      f"({on.get('board') or on.get('gpu')}, L4T {on.get('l4t')}, power mode {on.get('power_mode')}) "
                      f"in {record['build_seconds']:.0f} s")


@app.command()
@_handled()
@_with_ssh_options
def selftest(
    ssh: SshOptions,
    target: Annotated[str, typer.Option("--target", "-t", help="The device family or profile of this board.")] = "jetson",
    as_json: JsonOpt = False,
) -> None:
    """First run on a new board: convert the bundled sample, build, validate, one table.

    On this board, or with --remote converted here and built/validated on each board over SSH."""
    from edgeconv.selftest import selftest as run_selftest
    from edgeconv.selftest import selftest_remote

    if ssh.given:
        result = selftest_remote(target, ssh, _steps(as_json), None if as_json else _progress_line)
    else:
        result = run_selftest(target, _steps(as_json))
    if as_json:
        _emit_json(result)
    else:
        from rich.table import Table

        from edgeconv.render import console

        t = Table(title=f"edgeconv selftest · {result['target']}", title_justify="left")
        for col in ("where", "step", "ok", "detail"):
            t.add_column(col)
        for r in result["rows"]:
            t.add_row(r["where"], r["step"], "✅" if r["ok"] else "❌", r["detail"])
        console.print(t)
    if not result["ok"]:
        _exit_for_devices(result.get("devices") or [])
        raise typer.Exit(1)  # a local step failed, or a device ran but its check did not pass


toolchain_app = typer.Typer(help="NPU toolchains (rknn, qnn, imx500) in venvs edgeconv creates and records.",
                            no_args_is_help=True)
app.add_typer(toolchain_app, name="toolchain")


@toolchain_app.command("install")
@_handled(None)
def toolchain_install(
    names: Annotated[list[str], typer.Argument(help="Toolchains to install (see `edgeconv toolchain list`).")],
    find_links: Annotated[Path | None, typer.Option("--find-links", help="An offline wheelhouse: pip installs from this "
                                                    "folder only (--no-index).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Reinstall even when installed and verified.")] = False,
) -> None:
    """Create a toolchain's venv, install its pinned packages, probe it and record it (never done at convert time)."""
    from edgeconv import toolchains

    for name in names:
        toolchains.pins(name)  # an unknown name is refused before anything is installed
    for name in names:
        toolchains.install(name, find_links=find_links, force=force, progress=lambda msg: print(msg, file=sys.stderr))


@toolchain_app.command("list")
@_handled()
def toolchain_list(as_json: JsonOpt = False) -> None:
    """The toolchains edgeconv knows: installed (and verified) or not, versions, size, path."""
    from edgeconv import toolchains

    rows = toolchains.listing()
    if as_json:
        _emit_json({"ok": True, "root": str(toolchains.root()), "toolchains": rows})
        return
    from rich.table import Table

    from edgeconv.render import console

    t = Table(title=f"toolchains in {toolchains.root()}", title_justify="left")
    for col in ("name", "installed", "versions", "size", "path"):
        t.add_column(col)
    for r in rows:
        size = f"{r['size_bytes'] / 1e9:.2f} GB" if r["installed"] else ""
        t.add_row(r["name"], "yes" if r["installed"] else f"no: {r['reason']} ({r['install_command']})",
                  ", ".join(f"{k} {v}" for k, v in r["versions"].items()), size, r["path"])
    console.print(t)


GLOBAL_FLAGS = ("--debug", "--verbose")  # the root's switches, accepted after the command too (`convert … --verbose`)


def _global_flags_first(argv: list[str]) -> list[str]:
    """``argv`` with the root's switches moved before the command, where Click reads them (up to a ``--``)."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for i, a in enumerate(argv) if i >= end or a not in GLOBAL_FLAGS]


def main() -> None:
    app(args=_global_flags_first(sys.argv[1:]))


if __name__ == "__main__":
    main()
