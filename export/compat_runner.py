"""Run one model file in an isolated old runtime and print its outputs as JSON.

Executed by a compatibility venv's python (see export/compat_envs.py), so it imports nothing from
gridedge and only numpy plus the runtime under test. Reads a JSON request on stdin::

    {"runtime": "tflite" | "onnx", "model": PATH, "feeds": [{"past": [...], "future": [...]}, ...]}

and prints ``{"version": RUNTIME_VERSION, "outputs": [[...], ...]}``. Inputs and outputs are float32
in normalised units; int8 tensors are (de)quantised with the model's own parameters.
"""

import json
import sys

import numpy as np


def _tflite(model, feeds):
    import tflite_runtime
    from tflite_runtime.interpreter import Interpreter

    interpreter = Interpreter(model_path=model, num_threads=1)
    signatures = interpreter.get_signature_list()
    if signatures:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        inputs = runner.get_input_details()
        output = next(iter(runner.get_output_details().values()))
        # A live signature runner holds tensor references that forbid resizing the inputs.
        del runner
    else:
        inputs = {d["name"]: d for d in interpreter.get_input_details()}
        output = interpreter.get_output_details()[0]
    outputs = []
    for feed in feeds:
        batch = len(next(iter(feed.values())))
        for name, detail in inputs.items():
            value = feed.get(name)
            if value is None:
                value = next(v for k, v in feed.items() if k in name)
            shape = [batch, *np.asarray(value).shape[1:]]
            interpreter.resize_tensor_input(detail["index"], shape)
        interpreter.allocate_tensors()
        for name, detail in inputs.items():
            value = feed.get(name)
            if value is None:
                value = next(v for k, v in feed.items() if k in name)
            array = np.asarray(value, dtype=np.float32)
            scale, zero = detail["quantization"]
            if np.dtype(detail["dtype"]) != np.float32 and scale:
                info = np.iinfo(detail["dtype"])
                array = np.clip(np.round(array / scale + zero), info.min, info.max).astype(detail["dtype"])
            interpreter.set_tensor(detail["index"], array)
        interpreter.invoke()
        result = interpreter.get_tensor(output["index"])
        scale, zero = output["quantization"]
        if np.dtype(output["dtype"]) != np.float32 and scale:
            result = (result.astype(np.float32) - zero) * scale
        outputs.append(np.asarray(result, dtype=np.float32).tolist())
    return tflite_runtime.__version__, outputs


def _onnx(model, feeds):
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = []
    for feed in feeds:
        arrays = {name: np.asarray(feed[name], dtype=np.float32) for name in names}
        outputs.append(np.asarray(session.run(None, arrays)[0], dtype=np.float32).tolist())
    return onnxruntime.__version__, outputs


def main():
    request = json.load(sys.stdin)
    run = _tflite if request["runtime"] == "tflite" else _onnx
    version, outputs = run(request["model"], request["feeds"])
    json.dump({"version": version, "outputs": outputs}, sys.stdout)


if __name__ == "__main__":
    main()
