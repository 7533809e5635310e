"""int8 ONNX models that answer the same on every x86 CPU.

A QDQ model quantised with unsigned activations and signed weights (u8s8,
onnxruntime's quantiser default, as Smart Turn v3.2 is) runs on matrix kernels
that onnxruntime picks by the CPU. With VNNI (AVX-512 VNNI, AVX-VNNI, AMX) the
int8 products add up exactly in 32 bits. On AVX2 alone, its u8s8 kernel adds
each pair of products in 16 bits with saturation (``vpmaddubsw``), and the
answers change: Smart Turn's cut-off questions went from 13 of 14 scoring below
their complete ones to 9 of 14 (docs/decisions.md, "Smart Turn answers the same
on every CPU").

The same model with its int8 weights shifted to uint8 (w + 128 with zero point
z + 128: the same real values, exactly) runs on the u8u8 kernels, which are exact
everywhere but cost ~50 % more where VNNI is present. So ``exact_int8_session``
loads the model as shipped, asks both versions one probe, and keeps the shipped
one only where the two agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

AGREEMENT = 1e-4
"""Largest difference between the shipped and the unsigned model's outputs on the
probe that still counts as the same answer (exact kernels agree to 0.0 here)."""

SHIPPED = "u8s8"
UNSIGNED = "u8u8"


def unsigned_weights(model: Any) -> int:
    """Shift every int8 weight of ``model`` (an ``onnx.ModelProto``) that a
    ``DequantizeLinear`` reads, with its zero point, to uint8, in place; returns
    how many tensors were changed. The dequantised values are unchanged:
    (w + 128) - (z + 128) = w - z."""
    import onnx
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    shifted: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        weight = initializers.get(node.input[0])
        zero_point = initializers.get(node.input[2])
        if weight is None or zero_point is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        for tensor in (weight, zero_point):
            if tensor.name in shifted:
                continue
            values = numpy_helper.to_array(tensor).astype(np.int16) + 128
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), tensor.name))
            shifted.add(tensor.name)
    return len(shifted)


def exact_int8_session(
    shipped: Any, path: Path, options: Any, probe: dict[str, np.ndarray]
) -> tuple[Any, str]:
    """A session of the int8 model at ``path`` whose answers are the exact int8
    ones on this CPU, and which kernels it uses (``SHIPPED`` or ``UNSIGNED``).
    ``shipped``: the model's session as loaded (kept where it is exact);
    ``probe``: one input feed, a batch of varied inputs (a saturating kernel
    shows on the noise and tones Smart Turn's probe holds)."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))
    if unsigned_weights(model) == 0:
        return shipped, SHIPPED
    unsigned = onnxruntime.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    expected = np.asarray(unsigned.run(None, probe)[0], dtype=np.float64)
    answered = np.asarray(shipped.run(None, probe)[0], dtype=np.float64)
    if np.abs(expected - answered).max() <= AGREEMENT:
        return shipped, SHIPPED
    return unsigned, UNSIGNED
