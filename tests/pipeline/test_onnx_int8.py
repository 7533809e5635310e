"""int8 models answer the exact int8 result on every CPU (pipeline/onnx_int8.py):
a product built to saturate a 16-bit pair sum, and the real Smart Turn file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.onnx_int8 import SHIPPED, UNSIGNED, exact_int8_session, unsigned_weights

WIDTH = 64
X_SCALE = 1.0 / 255.0
W_SCALE = 0.01


def saturating_model(path: Path) -> None:
    """x (u8 after quantising) times an int8 weight of 127s, in QDQ form: every
    pair of products is 255 * 127 * 2 = 64770, past a 16-bit sum's 32767."""
    weight = np.full((WIDTH, 4), 127, dtype=np.int8)
    weight[:, 1] = -128
    weight[::3, 2] = 5
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w_dq"]),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array(W_SCALE, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "saturating",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def exact_answer(x: np.ndarray, path: Path) -> np.ndarray:
    model = onnx.load(str(path))
    weight = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    quantised = np.clip(np.round(x / X_SCALE), 0, 255)
    return (quantised @ weight.astype(np.float64)) * X_SCALE * W_SCALE


def options() -> onnxruntime.SessionOptions:
    result = onnxruntime.SessionOptions()
    result.intra_op_num_threads = 1
    return result


def test_unsigned_weights_keep_every_dequantised_value(tmp_path: Path) -> None:
    path = tmp_path / "saturating.onnx"
    saturating_model(path)
    model = onnx.load(str(path))
    assert unsigned_weights(model) == 2  # the weight and its zero point
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert tensors["w"].dtype == np.uint8 and tensors["w_zero"].dtype == np.uint8
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    np.testing.assert_array_equal(
        tensors["w"].astype(np.int32) - int(tensors["w_zero"]),
        original["w"].astype(np.int32) - int(original["w_zero"]),
    )
    assert unsigned_weights(model) == 0  # nothing signed is left


def test_the_chosen_session_gives_the_exact_product_on_this_cpu(tmp_path: Path) -> None:
    path = tmp_path / "saturating.onnx"
    saturating_model(path)
    x = np.ones((2, WIDTH), np.float32)
    x[1, ::2] = 0.5
    expected = exact_answer(x, path)
    shipped = onnxruntime.InferenceSession(
        str(path), sess_options=options(), providers=["CPUExecutionProvider"]
    )
    session, kernels = exact_int8_session(shipped, path, options(), {"x": x})
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5)
    # The shipped session is kept exactly where it is exact (VNNI); where its
    # kernel saturates (AVX2 alone) the unsigned copy answers instead.
    shipped_is_exact = np.allclose(shipped.run(None, {"x": x})[0], expected, rtol=1e-5)
    assert kernels == (SHIPPED if shipped_is_exact else UNSIGNED)
    assert (session is shipped) == shipped_is_exact


def test_a_model_without_int8_weights_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "float.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "float",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    shipped = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session, kernels = exact_int8_session(
        shipped, path, options(), {"x": np.ones((1, 2), np.float32)}
    )
    assert session is shipped and kernels == SHIPPED


@pytest.mark.parametrize("rows", [1, 3])
def test_smart_turn_answers_the_exact_int8_result(rows: int) -> None:
    """Whatever this CPU's int8 kernels, Smart Turn answers what the unsigned
    (exact everywhere) model does; on AVX2 alone the shipped one differed by up
    to 0.9 on the 14 example questions."""
    from pipeline import models
    from pipeline.smart_turn import SmartTurnModel, _probe_clips

    model = SmartTurnModel()
    assert model.int8_kernels in (SHIPPED, UNSIGNED)
    proto = onnx.load(str(models.smart_turn_model_path()))
    assert unsigned_weights(proto) > 30
    unsigned = onnxruntime.InferenceSession(
        proto.SerializeToString(), sess_options=options(), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(rows)
    clips = [*_probe_clips(), *(0.2 * rng.standard_normal((rows, 40000))).astype(np.float32)]
    features = np.stack([model.features(clip) for clip in clips])
    expected = unsigned.run(None, {"input_features": features})[0].reshape(-1)
    np.testing.assert_allclose(model.run_features(features), expected, rtol=0, atol=1e-5)
