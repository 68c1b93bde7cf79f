"""The served blend ``w·network + (1−w)·LightGBM`` as one ONNX graph on the bundle's own inputs.

Both graphs are copied side by side (names prefixed with :func:`onnx.compose.add_prefix`, the inputs shared)
and one Mul/Mul/Add weighs their outputs: the device runs one file, like any other artefact. The IR version and
the default-domain opset are the higher of the two (both stay within what export's targets read; the
compatibility runner proves it), the ai.onnx.ml opset is the tree ensemble's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from gridedge.export.errors import ExportError

NETWORK_PREFIX = "network/"
GBM_PREFIX = "lightgbm/"


def _opsets(*models: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    versions: dict[str, int] = {}
    for model in models:
        for opset in model.opset_import:
            domain = "" if opset.domain == "ai.onnx" else opset.domain
            versions[domain] = max(versions.get(domain, 0), opset.version)
    return [helper.make_opsetid(domain, version) for domain, version in versions.items()]


def blend_onnx(network_path: Path, gbm_path: Path, weight: float, path: Path) -> Path:
    """Write the graph whose output is ``weight`` × the network's output + (1 − ``weight``) × LightGBM's."""
    if not 0.0 < weight < 1.0:
        raise ExportError(f"blend weight {weight} is not strictly between 0 and 1 (0 or 1 serves one family alone)")
    network, gbm = onnx.load(str(network_path)), onnx.load(str(gbm_path))
    default_opsets = {o.version for m in (network, gbm) for o in m.opset_import if o.domain in ("", "ai.onnx")}
    if len(default_opsets) != 1:
        raise ExportError(
            f"{network_path.name} and {gbm_path.name} use default-domain opsets {sorted(default_opsets)}; a blend "
            "needs one opset for both graphs"
        )
    network = compose.add_prefix(network, NETWORK_PREFIX, rename_inputs=False)
    gbm = compose.add_prefix(gbm, GBM_PREFIX, rename_inputs=False)
    output = network.graph.output[0]
    name = output.name.removeprefix(NETWORK_PREFIX)
    shared = {i.name for i in network.graph.input}
    inputs = list(network.graph.input) + [i for i in gbm.graph.input if i.name not in shared]
    node = helper.make_node
    graph = helper.make_graph(
        [
            *network.graph.node,
            *gbm.graph.node,
            node("Mul", [output.name, "blend/network_weight"], ["blend/network_part"], name="blend/network_part"),
            node("Mul", [gbm.graph.output[0].name, "blend/gbm_weight"], ["blend/gbm_part"], name="blend/gbm_part"),
            node("Add", ["blend/network_part", "blend/gbm_part"], [name], name="blend/sum"),
        ],
        "gridedge_blend",
        inputs,
        [helper.make_tensor_value_info(name, output.type.tensor_type.elem_type, None)],
        initializer=[
            *network.graph.initializer,
            *gbm.graph.initializer,
            numpy_helper.from_array(np.array(weight, dtype=np.float32), "blend/network_weight"),
            numpy_helper.from_array(np.array(1.0 - weight, dtype=np.float32), "blend/gbm_weight"),
        ],
    )
    graph.output[0].type.CopyFrom(output.type)
    model = helper.make_model(
        graph,
        opset_imports=_opsets(network, gbm),
        ir_version=max(network.ir_version, gbm.ir_version),
        producer_name="gridedge",
    )
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())
    return path
