"""How fused attention (`graph/attention.py`) is written into ONNX, per TensorRT target.

TensorRT fuses attention into one multi-head-attention kernel from two forms:
- 11 (TensorRT >= 10.14, 11.x): the ONNX `Attention` op of opset 23, which torch's exporter
  writes for `scaled_dot_product_attention` at that opset;
- 10 (TensorRT 10.0-10.13, the line Jetson stays on): MatMul(Q, K^T) -> mask Add -> Softmax ->
  MatMul(., V) in the network's dtype, the softmax scale folded into Q. torch's own opset-18
  translation splits the scale over Q and K; ours folds it into Q, the form TensorRT documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import torch
from onnxscript import opset18 as op

from ..errors import UserError


@dataclass(frozen=True)
class AttentionTarget:
    trt_major: int  # the TensorRT generation the graphs are written for
    min_opset: int
    default_opset: int
    form: str  # what the manifest and lint say the attention looks like

    def translations(self) -> dict:
        """The exporter's custom_translation_table for this target."""
        if self.trt_major == 10:
            return {torch.ops.aten.scaled_dot_product_attention.default: _primitive_attention}
        return {}  # torch writes ONNX Attention at opset >= 23


TARGETS = {
    10: AttentionTarget(10, 18, 18, "MatMul -> Add -> Softmax -> MatMul, scale folded into Q"),
    11: AttentionTarget(11, 23, 23, "ONNX Attention (opset 23)"),
}


def attention_target(trt_major: int, opset: int | None) -> tuple[AttentionTarget, int]:
    """The target and the opset to export at (its default when `opset` is None)."""
    try:
        target = TARGETS[trt_major]
    except KeyError:
        raise UserError(f"--trt-target {trt_major} is not one of {', '.join(map(str, TARGETS))}") from None
    opset = target.default_opset if opset is None else opset
    if opset < target.min_opset:
        raise UserError(f"--trt-target {trt_major} writes {target.form}, which needs --opset >= {target.min_opset}")
    return target, opset


def _primitive_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    """aten.scaled_dot_product_attention as TensorRT 10's fusable pattern. Our graphs pass an
    additive mask, repeat K/V heads themselves and never ask for dropout or is_causal."""
    if is_causal or enable_gqa or dropout_p:
        raise NotImplementedError("fused attention is exported with an explicit mask and repeated K/V heads")
    if scale is None:  # 1 / sqrt(Dh) worked out in fp32, then rounded once to the network's dtype
        head_dim = op.Cast(op.Shape(query, start=-1), to=onnx.TensorProto.FLOAT)
        scale = op.Div(op.Constant(value_float=1.0), op.Sqrt(head_dim))
    else:
        scale = op.Constant(value_float=scale)
    factor = op.CastLike(scale, query)
    logits = op.MatMul(op.Mul(query, factor), op.Transpose(key, perm=[0, 1, 3, 2]))
    if attn_mask is not None:
        logits = op.Add(logits, attn_mask)
    return op.MatMul(op.Softmax(logits, axis=-1), value)
