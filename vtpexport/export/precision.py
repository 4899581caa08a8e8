"""Export precisions: the weights' dtype, the dtype name graphs declare, and verify's tolerance.

fp16 / bf16 are carried by the graph itself (TensorRT 11 networks are always strongly
typed): weights and activations in the low precision, while norms, softmax and the
pruning scores are computed in fp32 between explicit casts (see graph/ and pruning/).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


@dataclass(frozen=True)
class Precision:
    name: str  # what the CLI and manifest say: fp32, fp16, bf16
    torch_dtype: torch.dtype
    dtype_name: str  # numpy / ml_dtypes name in the graph declarations
    verify_tolerance: float  # max abs logit error `verify` accepts by default against an eager run in this dtype
    verify_rtol: float  # and on top of it, this fraction of the eager value's magnitude (Polygraphy's rtol)


PRECISIONS = {
    p.name: p
    for p in (
        Precision("fp32", torch.float32, "float32", 1e-4, 1e-5),
        # Unit roundoff 2^-11 (fp16) and 2^-8 (bf16) times accumulated rounding over a few layers.
        Precision("fp16", torch.float16, "float16", 5e-2, 1e-3),
        Precision("bf16", torch.bfloat16, "bfloat16", 2.5e-1, 8e-3),
    )
}


def precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise UserError(f"precision {name!r} is not one of {', '.join(PRECISIONS)}") from None
