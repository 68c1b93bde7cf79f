"""Convert an exported PyTorch program to TFLite fp32 and full-integer int8 with litert-torch.

Executed by the converter venv's python (see export/compat_envs.py and export/torch_tflite.py), so it
imports nothing from gridedge, whose pydantic the converter's typing-extensions<4.13 pin rules out. Its
single argument is a JSON request file::

    {"program": PATH.pt2, "calibration": PATH.npz, "out_dir": DIR, "stem": NAME,
     "precisions": ["fp32", "int8"], "result": PATH.json}

``program`` is a ``torch.export`` program traced at batch 1 with keyword inputs named "past" (and
"future"); ``calibration`` holds those inputs stacked over training windows (first axis = window).
Writes ``{out_dir}/{stem}.{precision}.tflite`` and a result JSON with the file names, the library
versions and the seconds each conversion took.

int8 is PT2E static quantisation (symmetric per-tensor int8 weights, int8 activations calibrated on
the windows), with int8 inputs and output: their scales and zero points are in the file.
"""

import json
import operator
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch


def _windows(calibration, names):
    """Single-window keyword inputs (batch 1, the shape the program was traced at)."""
    count = len(calibration[names[0]])
    return [{n: torch.from_numpy(np.ascontiguousarray(calibration[n][i : i + 1])) for n in names} for i in range(count)]


def _fp32(module, example):
    import litert_torch

    return litert_torch.convert(module, sample_kwargs=example)


def _restore_add_sources(graph):
    """Mark aten adds as ``operator.add`` again so the quantiser annotates them.

    A saved program loses the ``source_fn_stack`` metadata that litert-torch's add annotator matches
    on; without it residual adds stay in float behind DEQUANTIZE/QUANTIZE pairs and a model ending on
    one (the trainer's TCN) gets a float output.
    """
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.add.Tensor:
            node.meta.setdefault("source_fn_stack", [(node.name, operator.add)])


def _int8(module, example, windows):
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # Per-tensor weights: the W1 TCN's int8 file is 31 % of fp32 instead of 37 % with per-channel weights
    # (12 bytes of scale and zero point per channel), for a mean output error of 0.0120 instead of 0.0112.
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=False, is_dynamic=False))
    graph = torch.export.export(module, (), example).module()
    _restore_add_sources(graph)
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for window in windows:
            graph(**window)
    graph = convert_pt2e(graph, fold_quantize=False)
    return litert_torch.convert(graph, sample_kwargs=example, quant_config=QuantConfig(pt2e_quantizer=quantizer))


def main():
    request = json.loads(Path(sys.argv[1]).read_text())
    module = torch.export.load(request["program"]).module()
    with np.load(request["calibration"]) as data:
        calibration = {name: data[name].astype(np.float32) for name in data.files}
    names = [n for n in ("past", "future") if n in calibration]
    windows = _windows(calibration, names)
    example = windows[0]
    out_dir = Path(request["out_dir"])
    files, seconds = {}, {}
    for precision in request["precisions"]:
        started = time.perf_counter()
        converted = _fp32(module, example) if precision == "fp32" else _int8(module, example, windows)
        path = out_dir / f"{request['stem']}.{precision}.tflite"
        converted.export(str(path))
        files[precision] = path.name
        seconds[precision] = round(time.perf_counter() - started, 2)
    versions = {dist: version(dist) for dist in ("litert-torch", "litert-converter", "torch", "torchao")}
    Path(request["result"]).write_text(json.dumps({"files": files, "versions": versions, "seconds": seconds}))


if __name__ == "__main__":
    main()
