"""End-to-end export of real (small) W1 and W3 models from both frameworks, proven in each runtime."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import pack_archive, read_bundle, unpack_archive
from edge_agent.errors import IntegrityError, SelfTestError, SignatureError
from edge_agent.keys import load_private_key, load_public_key, new_keypair
from edge_agent.runtimes import load_model, run_self_test
from edge_agent.runtimes.litert import LiteRTConfig
from edge_agent.runtimes.ort import OnnxRuntimeConfig
from gridedge.export import converters
from gridedge.export.errors import ConversionError, ParityError
from gridedge.export.pipeline import ExportOptions, ExportResult, export_bundle
from gridedge.export.report import write_report

pytestmark = pytest.mark.slow
ALL_TARGETS = ("litert", "tflite-runtime-2.14", "ort", "ort-1.16")


def _export(source, out: Path, key: Path, targets, name: str) -> ExportResult:
    options = ExportOptions(name=name, targets=targets, latency_runs=50)
    return export_bundle(source, out, load_private_key(key), options)


@pytest.fixture(scope="session")
def exports(tmp_path_factory, signing_keys, w1_keras_source, w1_torch_source, w3_keras_source, w3_torch_source):
    root = tmp_path_factory.mktemp("bundles")
    private, _ = signing_keys
    return {
        "w1-keras": _export(w1_keras_source, root / "w1-keras", private, ALL_TARGETS, "w1-keras"),
        "w1-torch": _export(w1_torch_source, root / "w1-torch", private, ("ort", "ort-1.16"), "w1-torch"),
        "w3-keras": _export(w3_keras_source, root / "w3-keras", private, ("litert", "ort"), "w3-keras"),
        "w3-torch": _export(w3_torch_source, root / "w3-torch", private, ("ort",), "w3-torch"),
    }


@pytest.mark.parametrize("name", ["w1-keras", "w1-torch", "w3-keras", "w3-torch"])
def test_int8_artefacts_keep_the_metric_and_shrink(exports, name) -> None:
    result = exports[name]
    manifest = result.manifest
    metric = "f1" if manifest.output.anomaly else "mae"
    fp32 = {a.runtime: a for a in manifest.artefacts if a.precision == "fp32"}
    int8 = [a for a in manifest.artefacts if a.precision == "int8"]
    assert {a.runtime for a in int8} == set(fp32)
    for artefact in int8:
        assert artefact.metrics[f"{metric}_degradation"] <= 0.02, artefact.file
        # Below ~100 KB the fixed flatbuffer/graph overhead dominates (W3's 16-step model: 55 %).
        if fp32[artefact.runtime].bytes >= 100_000:
            assert artefact.bytes <= 0.35 * fp32[artefact.runtime].bytes, artefact.file
        assert artefact.latency is not None and artefact.latency.p50_us > 0
    assert manifest.metrics["float"][metric] == pytest.approx(result.float_metrics[metric])


def test_every_target_was_run_in_its_exact_runtime(exports) -> None:
    manifest = exports["w1-keras"].manifest
    by_target: dict[str, list[str]] = {}
    for artefact in manifest.artefacts:
        for target in artefact.compatibility_targets:
            by_target.setdefault(target, []).append(artefact.file)
            assert target in artefact.min_runtime_versions
    assert set(by_target) == set(ALL_TARGETS)
    versions = {t: v for a in manifest.artefacts for t, v in a.min_runtime_versions.items()}
    assert versions["tflite-runtime-2.14"] == "2.14.0"
    assert versions["ort-1.16"] == "1.16.3"
    assert any(f.endswith(".int8.tflite") for f in by_target["tflite-runtime-2.14"])
    assert any(f.endswith(".int8.onnx") for f in by_target["ort-1.16"])


def test_onnx_files_are_single_and_readable_by_old_runtimes(exports) -> None:
    import onnx

    for name in ("w1-keras", "w1-torch"):
        result = exports[name]
        assert not list(result.bundle_dir.glob("*.data"))
        for artefact in result.manifest.artefacts:
            if artefact.runtime == "onnx":
                proto = onnx.load(str(result.bundle_dir / artefact.file), load_external_data=False)
                onnx.checker.check_model(proto)
                assert proto.ir_version <= 9
                assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) <= 17


def test_onnx_int8_uses_7_bit_weights_that_the_fused_kernels_reproduce(exports) -> None:
    for name, result in exports.items():
        notes = [n for n in result.target_notes if n.startswith(f"{name}.int8.onnx:")]
        assert len(notes) == 1, result.target_notes
        assert "7-bit weights (reduce_range)" in notes[0] and "agree with the unfused graph" in notes[0]


def _cpu_has_vnni() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "vnni" in flags


@pytest.fixture
def w3_keras_onnx(w3_keras_source, tmp_path) -> tuple[Path, list[dict[str, np.ndarray]]]:
    fp32 = converters.keras_to_onnx(w3_keras_source.model, tmp_path / "w3.fp32.onnx", w3_keras_source.input_shapes)
    return fp32, converters.calibration_batches(w3_keras_source.calibration)


@pytest.mark.skipif(_cpu_has_vnni(), reason="VPMADDUBSW saturation shows only on x86 CPUs without VNNI")
def test_8_bit_weights_saturate_the_fused_kernels_and_are_refused(w3_keras_onnx, tmp_path, monkeypatch) -> None:
    fp32, calibration = w3_keras_onnx
    eight_bit = converters.StaticScheme("S8S8, 8-bit weights", "QInt8", "QInt8", reduce_range=False)
    saturating = tmp_path / "w3.8bit.onnx"
    converters._quantise_onnx(fp32, saturating, "static", calibration, eight_bit)
    check = converters._fusion_check(fp32, saturating, calibration)
    assert not check.consistent and check.fused_error > 3 * check.unfused_error
    monkeypatch.setattr(converters, "STATIC_SCHEMES", (eight_bit,))
    with pytest.raises(ConversionError, match=r"w3\.int8\.onnx: onnxruntime's fused int8 kernels disagree .* 8-bit"):
        converters.quantise_onnx(fp32, tmp_path / "w3.int8.onnx", "static", calibration)


def test_tflite_files_keep_only_the_names_a_runtime_reads(exports) -> None:
    from tensorflow.lite.tools import flatbuffer_utils

    result = exports["w1-keras"]
    for artefact in result.manifest.artefacts:
        if artefact.runtime != "tflite":
            continue
        model = flatbuffer_utils.read_model(str(result.bundle_dir / artefact.file))
        graph = model.subgraphs[0]
        boundary = set(graph.inputs) | set(graph.outputs)
        assert all(not t.name for i, t in enumerate(graph.tensors) if i not in boundary), artefact.file
        assert model.signatureDefs, artefact.file


def test_tflite_int8_records_quantisation_of_inputs_and_output(exports) -> None:
    int8 = exports["w1-keras"].manifest.artefact("w1-keras.int8.tflite")
    assert set(int8.quantisation) == {"past", "future", "output"}
    assert all(q.dtype == "int8" and q.scale > 0 for q in int8.quantisation.values())


@pytest.mark.parametrize(
    ("name", "config"),
    [("w1-keras", LiteRTConfig()), ("w1-keras", OnnxRuntimeConfig()), ("w1-torch", OnnxRuntimeConfig()),
     ("w3-keras", LiteRTConfig()), ("w3-torch", OnnxRuntimeConfig())],
)
def test_bundle_round_trip_verifies_loads_and_self_tests(exports, signing_keys, tmp_path, name, config) -> None:
    result = exports[name]
    archive = pack_archive(result.bundle_dir, tmp_path / "bundle.tar.gz")
    unpacked = unpack_archive(archive, tmp_path / "device")
    bundle = read_bundle(unpacked, load_public_key(signing_keys[1]))
    artefact, runtime = load_model(bundle, None, config)
    assert artefact.precision == "int8"
    assert run_self_test(runtime, bundle.manifest, artefact) <= artefact.self_test_atol
    for other in bundle.manifest.artefacts:
        if other.runtime == artefact.runtime:
            _, runtime = load_model(bundle, other.file, config)
            run_self_test(runtime, bundle.manifest, other)


def test_tampered_bundles_are_refused(exports, signing_keys, tmp_path) -> None:
    public = load_public_key(signing_keys[1])
    edited = shutil.copytree(exports["w1-torch"].bundle_dir, tmp_path / "edited")
    model = next(edited.glob("*.int8.onnx"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"int8\.onnx"):
        read_bundle(edited, public)

    relabelled = shutil.copytree(exports["w1-torch"].bundle_dir, tmp_path / "relabelled")
    manifest = json.loads((relabelled / "manifest.json").read_text())
    manifest["artefacts"][0]["self_test_atol"] = 1.0
    (relabelled / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SignatureError, match="does not verify"):
        read_bundle(relabelled, public)

    _, other_public = new_keypair(tmp_path / "other-keys")
    with pytest.raises(SignatureError):
        read_bundle(exports["w1-torch"].bundle_dir, load_public_key(other_public))


def test_self_test_names_the_artefact_vector_and_error(exports, signing_keys) -> None:
    bundle = read_bundle(exports["w1-torch"].bundle_dir, load_public_key(signing_keys[1]))
    artefact, runtime = load_model(bundle, None, OnnxRuntimeConfig())
    vector = bundle.manifest.test_vectors[1]
    wrong = vector.model_copy(
        update={"artefact_outputs": {artefact.file: (np.asarray(vector.artefact_outputs[artefact.file]) + 1).tolist()}}
    )
    manifest = bundle.manifest.model_copy(update={"test_vectors": (bundle.manifest.test_vectors[0], wrong)})
    with pytest.raises(SelfTestError, match=r"int8\.onnx: test vector 1 max abs error .* exceeds self_test_atol"):
        run_self_test(runtime, manifest, artefact)


def test_parity_gate_leaves_out_a_badly_calibrated_int8_or_refuses_when_told(
    w1_keras_source, signing_keys, tmp_path
) -> None:
    # Calibrating on windows shrunk 100x makes every real input saturate the int8 range.
    from dataclasses import replace

    shrunk = replace(w1_keras_source, calibration={k: v / 100 for k, v in w1_keras_source.calibration.items()})
    result = _export(shrunk, tmp_path / "kept", signing_keys[0], ("litert",), "kept")
    files = {a.file for a in result.manifest.artefacts}
    assert "kept.int8.tflite" not in files and "kept.fp32.tflite" in files
    assert not (result.bundle_dir / "kept.int8.tflite").exists()
    left_out = [n for n in result.target_notes if n.startswith("kept.int8.tflite: left out of the bundle")]
    assert len(left_out) == 1 and re.search(r"parity gate: test mae .* worse, bound 2\.00 %", left_out[0])

    out = tmp_path / "refused"
    options = ExportOptions(name="refused", targets=("litert",), latency_runs=50, require_all_artefacts=True)
    with pytest.raises(ParityError, match=r"every artefact must pass .*int8\.tflite: test mae .* worse, bound 2\.00 %"):
        export_bundle(shrunk, out, load_private_key(signing_keys[0]), options)
    assert not out.exists()


def test_parity_gate_refuses_when_nothing_that_passed_runs_a_target_or_the_served_model() -> None:
    from edge_agent.bundle import Serving
    from gridedge.export.pipeline import ArtefactResult, _leave_out_refused

    network = ArtefactResult("m.int8.onnx", Path("m.int8.onnx"), "onnx", "int8", targets=["ort"])
    trees = ArtefactResult("m.gbm.onnx", Path("m.gbm.onnx"), "onnx", "fp32", targets=["ort"], family="lightgbm")
    lite = ArtefactResult("m.int8.tflite", Path("m.int8.tflite"), "tflite", "int8", targets=["litert"])
    refused = {"m.int8.tflite": ["test mae 2 vs its float model 1"]}
    with pytest.raises(ParityError, match=r"nothing that passed runs on \['litert'\]\): m\.int8\.tflite: test mae 2"):
        _leave_out_refused([network, trees, lite], refused, ("litert", "ort"), None, False, [])
    served = Serving(family="lightgbm", metric="mae", scores={})
    with pytest.raises(ParityError, match="nothing that passed is of the served family lightgbm"):
        _leave_out_refused([network, trees], {"m.gbm.onnx": ["worse"]}, ("ort",), served, False, [])
    notes: list[str] = []
    assert _leave_out_refused([network, trees], {"m.int8.onnx": ["worse"]}, ("ort",), served, False, notes) == [trees]
    assert notes == ["m.int8.onnx: left out of the bundle by the parity gate: worse"]


def test_report_has_json_markdown_and_plot(exports, tmp_path) -> None:
    paths = write_report(exports["w3-keras"], tmp_path / "report")
    payload = json.loads(paths["json"].read_text())
    assert payload["metric"] == "f1"
    assert {row["precision"] for row in payload["artefacts"]} >= {"fp32", "int8"}
    markdown = paths["md"].read_text()
    assert "| w3-keras.int8.tflite | int8 |" in markdown
    assert "| f1 change vs float |" in markdown
    change = r"[+-]\d+\.\d\d % \((better|worse|same)\)"
    assert re.search(rf"\| w3-keras\.int8\.tflite \|.*\| {change} \|", markdown)
    assert all("f1_change_vs_float" in row for row in payload["artefacts"])
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_compares_static_and_dynamic_onnx_int8(w3_torch_source, signing_keys, tmp_path) -> None:
    options = ExportOptions(name="w3-dyn", targets=("ort",), onnx_dynamic_int8=True, latency_runs=20)
    result = export_bundle(w3_torch_source, tmp_path / "bundle", load_private_key(signing_keys[0]), options)
    markdown = write_report(result, tmp_path / "report")["md"].read_text()
    assert "ONNX int8, static QDQ vs dynamic" in markdown
    assert re.search(r"- dynamic: \d+\.\d % of fp32, p50 [\d.]+ µs \([\d.]+x fp32\), f1 [+-]", markdown)
