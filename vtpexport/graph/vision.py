"""CLIP vision tower and the LLaVA projector as plain PyTorch modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .args import LlavaArgs, VisionArgs
from .attention import causal_bias, fused_attention, score_probs


def activation(name: str):
    """The activation functions LLaVA checkpoints name in their configs."""
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu
    raise ValueError(f"unsupported activation {name!r}")


class VisionAttention(nn.Module):
    """CLIP attention; `causal` for CLIP's text tower, which shares the block with the vision tower."""

    def __init__(self, args: VisionArgs, causal: bool = False):
        super().__init__()
        self.causal = causal
        d = args.hidden_size
        self.num_heads = args.num_heads
        self.head_dim = args.head_dim
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def _heads(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape  # [B, S, D] -> [B, H, S, Dh]
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, return_probs: bool = False) -> tuple[Tensor, Tensor | None]:
        """Output [B, S, D] of the fused attention and, for a selector's probe, the fp32
        probabilities [B, H, S, S] computed beside it."""
        b, s, d = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        bias = causal_bias(s, x.dtype, x.device) if self.causal else None
        probs = score_probs(q, k, bias) if return_probs else None
        y = fused_attention(q, k, v, bias).transpose(1, 2).reshape(b, s, d)
        return self.out_proj(y), probs


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed in fp32 whatever the model dtype (fp16/bf16 exports keep norms in fp32)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        weight, bias = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class VisionMLP(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.fc1 = nn.Linear(args.hidden_size, args.intermediate_size)
        self.fc2 = nn.Linear(args.intermediate_size, args.hidden_size)
        self.act = activation(args.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, args: VisionArgs, causal: bool = False):
        super().__init__()
        self.layer_norm1 = LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.self_attn = VisionAttention(args, causal)
        self.layer_norm2 = LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.mlp = VisionMLP(args)

    def forward(self, x: Tensor, return_probs: bool = False) -> tuple[Tensor, Tensor | None]:
        attn, probs = self.self_attn(self.layer_norm1(x), return_probs)
        x = x + attn
        return x + self.mlp(self.layer_norm2(x)), probs


@dataclass
class VisionOutput:
    """Output of the vision tower; the probe fields are filled only when asked for."""

    features: Tensor  # [B, 1 + N, D] output of the feature layer, CLS first
    attn_probs: Tensor | None = None  # [B, H, 1 + N, 1 + N] of `attn_layer`
    query: Tensor | None = None  # [B, 1 + N, D] q_proj of `qk_layer` on its layer_norm1 input
    key: Tensor | None = None  # [B, 1 + N, D] k_proj of `qk_layer` likewise
    last_hidden: Tensor | None = None  # [B, 1 + N, D] output of the tower's last layer


class VisionTower(nn.Module):
    """CLIP ViT; runs only as many layers as the requested outputs need."""

    def __init__(self, args: VisionArgs):
        super().__init__()
        self.args = args
        d = args.hidden_size
        self.patch_embedding = nn.Conv2d(args.num_channels, d, args.patch_size, args.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(d))
        self.position_embedding = nn.Embedding(args.num_patches + 1, d)
        self.pre_layrnorm = LayerNorm(d, eps=args.layer_norm_eps)
        self.layers = nn.ModuleList(VisionBlock(args) for _ in range(args.num_layers))
        self.post_layernorm = LayerNorm(d, eps=args.layer_norm_eps)

    def embed(self, pixel_values: Tensor) -> Tensor:
        weight = self.patch_embedding.weight
        if weight.dtype == torch.bfloat16:
            # ONNX's Conv takes no bfloat16 before opset 22: convolve in fp32 between explicit casts.
            patches = F.conv2d(pixel_values.float(), weight.float(), stride=self.patch_embedding.stride)
            patches = patches.to(weight.dtype)
        else:
            patches = self.patch_embedding(pixel_values.to(weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)  # [B, N, D], raster order
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1)
        return self.pre_layrnorm(x + self.position_embedding.weight)

    def forward(
        self,
        pixel_values: Tensor,
        feature_layer: int,
        attn_layer: int | None = None,
        qk_layer: int | None = None,
        last_layer: bool = False,
    ) -> VisionOutput:
        """Run layers 0..feature_layer (0-based) and return that layer's output.

        attn_layer (<= feature_layer): also return that layer's attention probabilities.
        qk_layer (<= feature_layer + 1): also return that layer's q/k projections of its input.
        last_layer: run the remaining layers too and return the last one's output.
        """
        x = self.embed(pixel_values)
        out = VisionOutput(features=x)
        layers = self.args.num_layers if last_layer else feature_layer + 1
        for index in range(layers):
            if index == qk_layer:
                out.query, out.key = self._qk(index, x)
            x, probs = self.layers[index](x, return_probs=index == attn_layer)
            if probs is not None:
                out.attn_probs = probs
            if index == feature_layer:
                out.features = x
        if qk_layer == feature_layer + 1 and out.query is None:
            out.query, out.key = self._qk(qk_layer, x)
        if last_layer:
            out.last_hidden = x
        return out

    def _qk(self, index: int, x: Tensor) -> tuple[Tensor, Tensor]:
        layer = self.layers[index]
        h = layer.layer_norm1(x)
        return layer.self_attn.q_proj(h), layer.self_attn.k_proj(h)


class Projector(nn.Module):
    """LLaVA's mlp2x_gelu: Linear -> act -> Linear."""

    def __init__(self, args: LlavaArgs):
        super().__init__()
        d_text = args.text.hidden_size
        self.linear_1 = nn.Linear(args.vision.hidden_size, d_text, bias=args.projector_bias)
        self.act = activation(args.projector_hidden_act)
        self.linear_2 = nn.Linear(d_text, d_text, bias=args.projector_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))
