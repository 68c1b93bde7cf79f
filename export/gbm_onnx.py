"""A :class:`~gridedge.trainer.gbm.GbmModel` as one ONNX graph that takes the bundle's own inputs.

The graph computes :func:`~gridedge.trainer.gbm.gbm_features` from ``past``/``future`` (Gather, Slice,
ReduceMean, Expand), feeds the rows to each target's tree ensemble (onnxmltools' LightGBM converter, the
``TreeEnsembleRegressor`` of ai.onnx.ml) and reshapes the result to ``(batch, horizon, targets)`` in
normalised units: the agent runs it on ONNX Runtime exactly like a network's artefact. IR 8 / opset 17, so
ONNX Runtime 1.16 (JetPack 5) loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_agent.features import FeatureSpec
from gridedge.export.errors import ExportError
from gridedge.trainer.gbm import GbmModel

OPSET = 17
IR_VERSION = 8
# onnxmltools 1.16 converts for default-domain opsets up to 15; its tree nodes are unchanged through 17.
CONVERTER_OPSET = 15
OUTPUT = "forecast"


def _tree_nodes(model: GbmModel, features: int) -> tuple[list[onnx.NodeProto], int]:
    """Each booster's TreeEnsembleRegressor, reading ``features`` and writing ``tree_<t>``; the ml opset."""
    from onnxmltools.convert import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    nodes, ml_opset = [], 1
    for index, booster in enumerate(model.boosters):
        converted = convert_lightgbm(
            booster, initial_types=[("features", FloatTensorType([None, features]))],
            target_opset=CONVERTER_OPSET, zipmap=False,
        )
        trees = [n for n in converted.graph.node if n.op_type == "TreeEnsembleRegressor"]
        others = {n.op_type for n in converted.graph.node} - {"TreeEnsembleRegressor", "Identity"}
        if len(trees) != 1 or others:
            raise ExportError(
                f"onnxmltools gave {[n.op_type for n in converted.graph.node]} for booster {index}; expected one "
                "TreeEnsembleRegressor (a regression objective without an output transform)"
            )
        node = trees[0]
        _round_thresholds_down(node, booster)
        del node.output[:]
        node.output.append(f"tree_{index}")
        node.name = f"tree_ensemble_{index}"
        nodes.append(node)
        ml_opset = max(ml_opset, *(o.version for o in converted.opset_import if o.domain == "ai.onnx.ml"))
    return nodes, ml_opset


def _split_thresholds(booster: Any) -> dict[tuple[int, int, float], set[float]]:
    """(tree, feature, float32 threshold) -> the double thresholds LightGBM compares with, per split."""
    found: dict[tuple[int, int, float], set[float]] = {}

    def walk(tree: int, node: dict[str, Any]) -> None:
        if "split_feature" not in node:
            return
        threshold = float(node["threshold"])
        key = (tree, int(node["split_feature"]), float(np.float32(threshold)))
        found.setdefault(key, set()).add(threshold)
        walk(tree, node["left_child"])
        walk(tree, node["right_child"])

    for info in booster.dump_model()["tree_info"]:
        walk(int(info["tree_index"]), info["tree_structure"])
    return found


def _round_thresholds_down(node: onnx.NodeProto, booster: Any) -> None:
    """Make the float32 thresholds decide as LightGBM's doubles do.

    LightGBM sends ``x <= t`` left with ``t`` a double; the ONNX node holds float32 thresholds, rounded to the
    nearest. For any float32 ``x``, ``x <= t`` holds exactly when ``x`` is at most the largest float32 not above
    ``t``, so that is the threshold written: the tree then splits every float32 input as LightGBM does.
    """
    attrs = {a.name: a for a in node.attribute}
    doubles = _split_thresholds(booster)
    values = list(attrs["nodes_values"].floats)
    modes = [m.decode() for m in attrs["nodes_modes"].strings]
    for i, mode in enumerate(modes):
        if mode != "BRANCH_LEQ":
            continue
        tree, feature = int(attrs["nodes_treeids"].ints[i]), int(attrs["nodes_featureids"].ints[i])
        key = (tree, feature, float(np.float32(values[i])))
        below = {_float32_at_most(t) for t in doubles.get(key, set())}
        if len(below) != 1:
            raise ExportError(f"cannot match ONNX split {key} to one LightGBM threshold (found {sorted(below)})")
        values[i] = below.pop()
    del attrs["nodes_values"].floats[:]
    attrs["nodes_values"].floats.extend(values)


def _float32_at_most(value: float) -> float:
    rounded = np.float32(value)
    return float(rounded if float(rounded) <= value else np.nextafter(rounded, np.float32(-np.inf)))


def gbm_to_onnx(model: GbmModel, spec: FeatureSpec, path: Path) -> Path:
    """Write ``model`` as an ONNX file with inputs ``past`` (and ``future``) and output ``forecast``."""
    plan = model.plan
    steps, horizon, targets = spec.input_steps, plan.horizon, len(plan.target_columns)
    consts: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        consts.append(numpy_helper.from_array(value, name))
        return name

    def i64(name: str, *values: int) -> str:
        return const(name, np.asarray(values, dtype=np.int64))

    node = helper.make_node
    nodes = [
        node("Shape", ["past"], ["past_shape"]),
        node("Slice", ["past_shape", i64("zero", 0), i64("one", 1)], ["batch"]),
        node("Concat", ["batch", i64("h_1", horizon, 1)], ["shape_h_1"], axis=0),
        node("Concat", ["batch", i64("h_t", horizon, targets)], ["shape_h_t"], axis=0),
        node("Expand", [const("steps", np.arange(horizon, dtype=np.float32).reshape(1, horizon, 1)), "shape_h_1"],
             ["f_step"]),
    ]
    parts = ["f_step"]
    inputs = [helper.make_tensor_value_info("past", TensorProto.FLOAT, ["batch", steps, len(spec.past_feature_names)])]
    if plan.future_columns:
        future_shape: list[str | int] = ["batch", horizon, plan.future_columns]
        inputs.append(helper.make_tensor_value_info("future", TensorProto.FLOAT, future_shape))
        parts.append("future")
    if plan.yesterday_rows is not None:
        nodes += [
            node("Gather", ["past", const("yesterday_rows", plan.yesterday_rows)], ["yesterday_all"], axis=1),
            node("Gather", ["yesterday_all", i64("daily", *plan.yesterday_columns)], ["f_yesterday"], axis=2),
        ]
        parts.append("f_yesterday")
    nodes += [
        node("Gather", ["past", i64("target_columns", *plan.target_columns)], ["targets"], axis=2),
        node("Slice", ["targets", i64("last_start", steps - 1), i64("end", steps), i64("time_axis", 1)], ["last"]),
        node("Expand", ["last", "shape_h_t"], ["f_last"]),
        node("Slice", ["targets", i64("recent_start", steps - plan.recent_rows), "end", "time_axis"], ["recent"]),
        node("ReduceMean", ["recent"], ["recent_mean"], axes=[1], keepdims=1),
        node("Expand", ["recent_mean", "shape_h_t"], ["f_recent"]),
    ]
    parts += ["f_last", "f_recent"]
    count = len(plan.names)
    nodes += [
        node("Concat", parts, ["feature_grid"], axis=2),
        node("Reshape", ["feature_grid", i64("rows", -1, count)], ["features"]),
    ]
    trees, ml_opset = _tree_nodes(model, count)
    nodes += trees
    nodes += [
        node("Concat", [t.output[0] for t in trees], ["per_row"], axis=1),
        node("Reshape", ["per_row", i64("out_shape", -1, horizon, targets)], [OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes, "gridedge_lightgbm", inputs,
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", horizon, targets])],
        initializer=consts,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ml_opset)],
        ir_version=IR_VERSION, producer_name="gridedge",
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    path.write_bytes(onnx_model.SerializeToString())
    return path
