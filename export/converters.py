"""Model converters: Keras -> TFLite (fp32, fp16, dynamic-range, full int8), Keras -> ONNX (tf2onnx),
PyTorch -> ONNX (single file), and ONNX Runtime int8 quantisation (static QDQ, or dynamic).

Every converter writes one self-contained file and keeps the model I/O contract: inputs named "past"
(and "future"), one float output in normalised units (TFLite int8 models take int8 I/O whose
quantisation parameters the runtime reads from the file).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_agent.arrays import FloatArray
from gridedge.export.errors import CalibrationError, ConversionError

TflitePrecision = Literal["fp32", "fp16", "dynamic-int8", "int8"]
# Old runtimes (onnxruntime 1.16 on JetPack 5) read IR <= 9 and opset <= 17; newer ones read both.
ONNX_OPSET = 17
ONNX_IR_VERSION = 9
MIN_CALIBRATION_WINDOWS = 16


def calibration_batches(feeds: dict[str, FloatArray], limit: int = 200) -> list[dict[str, FloatArray]]:
    """Split calibration feeds into single-window feed dicts, evenly spread over the training split."""
    count = len(next(iter(feeds.values())))
    if count < MIN_CALIBRATION_WINDOWS:
        raise CalibrationError(
            f"only {count} valid training window(s) to calibrate int8 quantisation; at least "
            f"{MIN_CALIBRATION_WINDOWS} are needed — train on a longer span or shorten the window"
        )
    picks = np.unique(np.linspace(0, count - 1, num=min(limit, count)).astype(int))
    return [{name: value[i : i + 1] for name, value in feeds.items()} for i in picks]


def fault_windows(
    feeds: dict[str, FloatArray], target_columns: Sequence[int], margin_std: float, count: int = 40
) -> list[dict[str, FloatArray]]:
    """Training windows with one injected spike each, beyond the training range by ``margin_std``.

    Static int8 ranges calibrated on normal windows only clip exactly the inputs an anomaly detector
    exists for (measured on W3 Keras: F1 -11 % in int8). Spikes ``margin_std`` standard deviations
    (normalised units) past the training minimum and maximum, alternately, at positions spread over the
    window, make the input and activation ranges cover faults of that size.
    """
    past = feeds["past"]
    lower = float(past[..., list(target_columns)].min()) - margin_std
    upper = float(past[..., list(target_columns)].max()) + margin_std
    picks = np.linspace(0, len(past) - 1, num=min(count, len(past))).astype(int)
    windows = []
    for n, index in enumerate(picks):
        window = {name: value[index : index + 1].copy() for name, value in feeds.items()}
        step = (n * 7) % past.shape[1]
        window["past"][0, step, list(target_columns)] = upper if n % 2 == 0 else lower
        windows.append(window)
    return windows


@dataclass(frozen=True)
class LevelChannel:
    """A measured channel whose level may move on site: its ``past`` column, the ``future`` columns that move
    with it (its seasonal-naive forecasts) and its physical range, all in normalised units."""

    column: int
    future_columns: tuple[int, ...] = ()
    low: float = -np.inf
    high: float = np.inf


def shifted_windows(
    feeds: dict[str, FloatArray], channels: Sequence[LevelChannel], margin_std: float, count: int = 40
) -> list[dict[str, FloatArray]]:
    """Training windows with channels shifted in level to ``margin_std`` past the training range.

    Calibrated on training windows only, static int8 clips every input and activation at the training
    extremes, so a site whose level moved (a new load: what drift detection exists for) gets a model whose
    forecast is capped where the float model's is not; a linear path from the inputs to the output passes
    that clipping straight through (measured: 5.5 % more MAE than float on a drifted site's test windows).
    Each window is shifted, alternately up and down, so the channel reaches ``margin_std`` standard
    deviations (normalised units) past the training maximum or minimum, never past its physical range
    (a value the device cannot read needs no int8 range).
    """
    past = feeds["past"]
    picks = np.linspace(0, len(past) - 1, num=min(count, len(past))).astype(int)
    windows = []
    for n, index in enumerate(picks):
        window = {name: value[index : index + 1].copy() for name, value in feeds.items()}
        for channel in channels:
            values, own = past[..., channel.column], window["past"][..., channel.column]
            if n % 2 == 0:
                shift = min(float(values.max()) + margin_std, channel.high) - float(own.max())
            else:
                shift = max(float(values.min()) - margin_std, channel.low) - float(own.min())
            moved = {"past": [channel.column], "future": list(channel.future_columns)}
            for name, columns in moved.items():
                if columns:
                    window[name][..., columns] = np.clip(window[name][..., columns] + shift, channel.low, channel.high)
        windows.append(window)
    return windows


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """TF and ORT converters print progress to stdout; keep the CLI's output readable.

    TFLite's int8 calibrator also instantiates TensorFlow's own deprecated ``tf.lite.Interpreter``,
    whose deprecation warning (five lines) tells a gridedge user nothing they can act on.
    """
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated")
        yield


def keras_to_tflite(
    model: Any,
    precision: TflitePrecision,
    calibration: Sequence[dict[str, FloatArray]] = (),
    disable_per_channel_dense: bool = False,
) -> bytes:
    """Convert a Keras 3 functional model to a TFLite flatbuffer of the given precision.

    ``disable_per_channel_dense`` makes dynamic-range and int8 models loadable by tflite-runtime 2.14,
    whose FULLY_CONNECTED kernel predates per-channel weights.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if precision != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if precision == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        if precision == "int8":
            if not calibration:
                raise CalibrationError("full int8 conversion needs calibration windows from the training split")
            windows = list(calibration)
            converter.representative_dataset = lambda: iter(windows)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        if disable_per_channel_dense:
            # Private but the documented way to keep FULLY_CONNECTED at a version tflite-runtime 2.14 has.
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        try:
            flatbuffer: bytes = converter.convert()
        except Exception as exc:  # the converter raises ConverterError, RuntimeError or worse
            raise ConversionError(
                f"TFLite {precision} conversion failed: {exc}. Recurrent Keras layers need unroll=True "
                "for int8; prefer convolutional or dense forecasters"
            ) from exc
    return _strip_tflite_names(flatbuffer)


def _strip_tflite_names(flatbuffer: bytes) -> bytes:
    """Drop the names of internal tensors and the model description, which no interpreter reads.

    The converter names every tensor after its Keras layer path; on the reference W3 autoencoder those
    names are 10 % of the int8 file. Input/output tensor names and the signature (which the runtimes use
    to find "past"/"future") are kept; weights, quantisation parameters and metadata are untouched.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    model.description = None
    for subgraph in model.subgraphs:
        boundary = {int(i) for i in subgraph.inputs} | {int(i) for i in subgraph.outputs}
        for index, tensor in enumerate(subgraph.tensors):
            if index not in boundary:
                tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def keras_to_onnx(model: Any, path: Path, input_shapes: Mapping[str, tuple[int, ...]]) -> Path:
    """Convert a Keras functional model to ONNX with tf2onnx (opset 17, IR 9, one file).

    tf2onnx's ``from_keras`` feeds Keras 3 models a list and breaks on dict inputs, so the model is
    wrapped in a ``tf.function`` whose arguments carry the contract's names.
    """
    try:
        import tf2onnx
    except ImportError as exc:
        raise ConversionError(
            "Keras -> ONNX needs tf2onnx; install it with `pip install 'gridedge[train]'`"
        ) from exc
    import tensorflow as tf

    names = list(input_shapes)
    signature = [tf.TensorSpec((None, *input_shapes[n]), tf.float32, name=n) for n in names]

    structured = len(model.inputs) > 1 or isinstance(model.input, dict)

    @tf.function(input_signature=signature)
    def serve(*args: Any) -> Any:
        return model(dict(zip(names, args, strict=True)) if structured else args[0], training=False)

    try:
        with _quiet():
            proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=ONNX_OPSET)
    except Exception as exc:  # tf2onnx surfaces TF graph errors of many types
        raise ConversionError(f"Keras -> ONNX conversion with tf2onnx failed: {exc}") from exc
    return _save_onnx(proto, path)


def torch_to_onnx(module: Any, path: Path, example: dict[str, FloatArray]) -> Path:
    """Export a PyTorch module ``forward(past, future=None)`` to a single ONNX file (opset 17, IR 9)."""
    import torch

    names = list(example)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    dynamic = {n: {0: "batch"} for n in names}
    module = module.eval()
    with tempfile.TemporaryDirectory() as tmp, _quiet(), torch.no_grad():
        raw = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(
                module,
                args,
                str(raw),
                input_names=names,
                output_names=["output"],
                dynamic_axes={**dynamic, "output": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
                external_data=False,
            )
        except Exception as exc:  # torch.onnx raises a mix of RuntimeError/TorchExportError/UnsupportedOp
            raise ConversionError(f"PyTorch -> ONNX export failed: {exc}") from exc
        import onnx

        proto = onnx.load(str(raw))
    return _save_onnx(proto, path)


def _compact(proto: Any) -> None:
    """Drop what a device never needs: unused opset imports, doc strings and long internal names.

    The quantiser stamps every domain it knows (ai.onnx.ml opset 5 is rejected by onnxruntime 1.16)
    and QDQ graphs carry ~100 long tensor names, which is a fifth of a small int8 file.
    """
    used = {node.domain or "" for node in proto.graph.node}
    keep = [o for o in proto.opset_import if (o.domain or "") in used | {""}]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    graph = proto.graph
    boundary = {v.name for v in graph.input} | {v.name for v in graph.output}
    renames: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in boundary:
            return name
        return renames.setdefault(name, f"t{len(renames)}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
        tensor.doc_string = ""
    for info in graph.value_info:
        info.name = short(info.name)
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    proto.doc_string = ""
    graph.doc_string = ""


def _save_onnx(proto: Any, path: Path) -> Path:
    import onnx

    _compact(proto)
    proto.ir_version = min(proto.ir_version, ONNX_IR_VERSION)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"{path.name}: onnx.checker rejects the exported model: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


@dataclass(frozen=True)
class StaticScheme:
    """How static QDQ int8 stores activations and weights."""

    label: str
    activation_type: str
    weight_type: str
    reduce_range: bool


# Tried in order. x86 CPUs without VNNI (AVX2 only, like this build machine and many gateways) run ORT's
# int8 kernels with VPMADDUBSW, which adds two u8*s8 products into a saturating int16 (S8 activations are
# shifted to U8 first): 8-bit weights overflow it and the fused kernels disagree with the same graph run
# unfused (measured, onnxruntime 1.16 and 1.32 alike: 1.04-1.11x the quantisation error on W1, 2.7-5.7x on
# W3). 7-bit weights (reduce_range) cannot overflow, cost 3-18 % more quantisation error on the reference
# W1/W3 runs and keep the file size. The device's CPU is unknown at export time, so they are always used;
# S8S8 stays the format TensorRT reads. U8U8 (no VPMADDUBSW) is the fallback should a graph still disagree.
STATIC_SCHEMES = (
    StaticScheme("S8S8, 7-bit weights (reduce_range)", "QInt8", "QInt8", reduce_range=True),
    StaticScheme("U8U8", "QUInt8", "QUInt8", reduce_range=False),
)


@dataclass(frozen=True)
class FusionCheck:
    """Mean abs error against the float model of the QDQ graph run unfused and with ORT's fused kernels."""

    unfused_error: float
    fused_error: float

    @property
    def consistent(self) -> bool:
        # Fused kernels round intermediate results differently, so some spread is normal; saturation
        # (measured: several times the quantisation error) is not.
        return self.fused_error <= 2 * self.unfused_error + 1e-4


def quantise_onnx(
    source: Path,
    path: Path,
    mode: Literal["static", "dynamic"],
    calibration: Sequence[dict[str, FloatArray]] = (),
    notes: list[str] | None = None,
) -> Path:
    """Quantise an ONNX model to int8: static QDQ (calibrated on training windows) or dynamic.

    Static QDQ keeps float inputs and outputs and runs on every onnxruntime from 1.16; dynamic needs no
    calibration but quantises activations at run time, which is often slower on small models.

    Static models are checked on calibration windows: ORT's fused int8 kernels must agree with the same
    QDQ graph run unfused (see :data:`STATIC_SCHEMES`). The first scheme that agrees is kept and recorded
    in ``notes``; when none does, the export is refused rather than shipping a model whose accuracy
    depends on the device's CPU.
    """
    if mode == "dynamic":
        _quantise_onnx(source, path, mode, calibration, None)
        return path
    checks: list[str] = []
    for scheme in STATIC_SCHEMES:
        _quantise_onnx(source, path, mode, calibration, scheme)
        check = _fusion_check(source, path, calibration)
        checks.append(
            f"{scheme.label}: fused {check.fused_error:.3g} vs unfused {check.unfused_error:.3g}"
        )
        if check.consistent:
            if notes is not None:
                notes.append(
                    f"{path.name}: static QDQ {scheme.label}; ORT fused int8 kernels agree with the unfused "
                    f"graph (mean abs error vs float on calibration windows {check.fused_error:.3g} vs "
                    f"{check.unfused_error:.3g})"
                )
            return path
    raise ConversionError(
        f"{path.name}: onnxruntime's fused int8 kernels disagree with the unfused QDQ graph under every "
        f"scheme tried ({'; '.join(checks)}; mean abs error vs float); export fp32 ONNX or the TFLite "
        "artefact for this model"
    )


def _fusion_check(source: Path, path: Path, calibration: Sequence[dict[str, FloatArray]]) -> FusionCheck:
    """Compare ORT's fused int8 kernels with the same QDQ graph run unfused, both against the float model."""
    import onnxruntime as ort

    def session(model: Path, level: Any) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    windows = list(calibration)[:32]
    feeds = {name: np.concatenate([w[name] for w in windows]) for name in windows[0]}
    reference = session(source, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC).run(None, feeds)[0]
    unfused = session(path, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC).run(None, feeds)[0]
    fused = session(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, feeds)[0]
    return FusionCheck(
        unfused_error=float(np.mean(np.abs(unfused - reference))),
        fused_error=float(np.mean(np.abs(fused - reference))),
    )


def _quantise_onnx(
    source: Path,
    path: Path,
    mode: Literal["static", "dynamic"],
    calibration: Sequence[dict[str, FloatArray]],
    scheme: StaticScheme | None,
) -> Path:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self, windows: Sequence[dict[str, FloatArray]]) -> None:
            self._windows = iter(windows)

        def get_next(self) -> dict[str, FloatArray] | None:
            return next(self._windows, None)

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            if mode == "static":
                if not calibration:
                    raise CalibrationError("static int8 quantisation needs calibration windows")
                if scheme is None:
                    raise ConversionError("static int8 quantisation needs a scheme")
                weight_type = QuantType[scheme.weight_type]
                quantize_static(
                    str(prepared),
                    str(path),
                    _Reader(calibration),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType[scheme.activation_type],
                    weight_type=weight_type,
                    per_channel=True,
                    reduce_range=scheme.reduce_range,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={
                        "ActivationSymmetric": False,
                        "WeightSymmetric": weight_type == QuantType.QInt8,
                    },
                )
            else:
                quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8)
        except CalibrationError:
            raise
        except Exception as exc:  # the quantiser raises whatever its graph passes raise
            raise ConversionError(f"ONNX {mode} int8 quantisation failed: {exc}") from exc
    proto = onnx.load(str(path))
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > ONNX_OPSET:
        raise ConversionError(
            f"the quantiser raised the opset to {opset}; onnxruntime 1.16 reads at most {ONNX_OPSET}"
        )
    return _save_onnx(proto, path)


def onnx_description(path: Path) -> dict[str, int]:
    """IR version and default-domain opset of an ONNX file (recorded in the export report)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"ir_version": int(proto.ir_version), "opset": int(opset)}


def onnx_output_scale(path: Path) -> float | None:
    """Scale of the DequantizeLinear that produces a static-QDQ model's output, if one does."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    output = graph.output[0].name
    producer = next((node for node in graph.node if output in node.output), None)
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    scales = {item.name: item for item in graph.initializer}
    scale = scales.get(producer.input[1])
    return None if scale is None else float(np.max(numpy_helper.to_array(scale)))
