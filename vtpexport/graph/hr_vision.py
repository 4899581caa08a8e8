"""LLaVA-HR's mixture-of-resolution vision stage (Luo et al., "Feast Your Eyes"), as plain modules.

Read from the authors' code (luogen1996/LLaVA-HR, multipath_encoder_wapper.py):
- slow path: a timm ConvNeXt (stem and four stages, no final norm) on the full 1024 image
  -> [B, C_s, 32, 32];
- fast path: the CLIP ViT on the image resized to 448 (bilinear, align_corners=True); the CLS
  token is dropped after the embeddings, so only the 32x32 patch tokens enter the transformer;
  the 24x24 position table is resampled to 32x32 with antialiased bicubic interpolation (the
  authors do it on every forward; we do it once, when the weights load); all layers run and
  post_layernorm is not used;
- an MR-adapter after every quarter of the ViT's layers (6, 12, 18 of 24) mixes the final
  ConvNeXt map into the ViT tokens, and a final fusion adds both paths -> [B, 1024, D].
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .args import ConvNextArgs, LlavaArgs
from .vision import VisionOutput, VisionTower


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map (timm's LayerNorm2d)."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNextMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvNextBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> MLP (channels last) -> layer scale, plus the residual."""

    def __init__(self, dim: int, args: ConvNextArgs):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, args.kernel_size, padding=args.kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=args.layer_norm_eps)
        self.mlp = ConvNextMlp(dim, args.mlp_ratio * dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))  # [B, H, W, C]
        return x + (self.mlp(y) * self.gamma).permute(0, 3, 1, 2)


class ConvNextStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, args: ConvNextArgs, downsample: bool):
        super().__init__()
        self.downsample = (
            nn.Sequential(LayerNorm2d(in_dim, eps=args.layer_norm_eps), nn.Conv2d(in_dim, dim, 2, stride=2))
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(*(ConvNextBlock(dim, args) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class ConvNext(nn.Module):
    """timm's ConvNeXt feature trunk: [B, 3, S, S] -> [B, dims[-1], S / 32, S / 32]."""

    def __init__(self, args: ConvNextArgs):
        super().__init__()
        d = args.dims
        self.stem = nn.Sequential(
            nn.Conv2d(args.num_channels, d[0], args.stem_patch_size, stride=args.stem_patch_size),
            LayerNorm2d(d[0], eps=args.layer_norm_eps),
        )
        # Stage 0 keeps the stem's resolution; the others halve it first.
        self.stages = nn.Sequential(
            *(ConvNextStage(d[max(i - 1, 0)], d[i], args.depths[i], args, downsample=i > 0) for i in range(len(d)))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


def tokens_of(grid: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H * W, C] in raster order."""
    return grid.flatten(2).transpose(1, 2)


class MrAdapter(nn.Module):
    """The MR-adapter: the slow map, projected to the ViT width, mixed into the fast tokens
    through a learned gate: fast' + slow * tanh(gate(mean of both))."""

    def __init__(self, fast_dim: int, slow_dim: int):
        super().__init__()
        self.slow_conv = nn.Conv2d(slow_dim, slow_dim, 1)
        self.slow_proj = nn.Conv2d(slow_dim, fast_dim, 1)
        self.fast_conv = nn.Conv2d(fast_dim, fast_dim, 7, padding=3, groups=fast_dim)
        self.fast_proj = nn.Conv2d(fast_dim, fast_dim, 1)
        self.gate = nn.Sequential(nn.Linear(2 * fast_dim, fast_dim // 2), nn.GELU(), nn.Linear(fast_dim // 2, 1))

    def forward(self, fast: Tensor, slow_map: Tensor) -> Tensor:
        """fast [B, N, D] ViT tokens; slow_map [B, C_s, h, w] with h * w = N."""
        b, n, d = fast.shape
        h, w = slow_map.shape[-2:]
        slow = tokens_of(self.slow_proj(F.gelu(self.slow_conv(slow_map))))  # [B, N, D]
        fast_map = fast.transpose(1, 2).reshape(b, d, h, w)
        fast = fast + tokens_of(self.fast_proj(F.gelu(self.fast_conv(fast_map))))
        gate = self.gate(torch.cat([fast, slow], dim=-1).mean(dim=1))[:, None]  # [B, 1, 1]
        return fast + slow * torch.tanh(gate)


class MultiPathFusion(nn.Module):
    """The final fusion: Linear(fast tokens) + Linear(slow map tokens)."""

    def __init__(self, fast_dim: int, slow_dim: int):
        super().__init__()
        self.fast_proj = nn.Linear(fast_dim, fast_dim)
        self.slow_proj = nn.Linear(slow_dim, fast_dim)

    def forward(self, fast: Tensor, slow_map: Tensor) -> Tensor:
        return self.fast_proj(fast) + self.slow_proj(tokens_of(slow_map))


def resample_positions(table: Tensor, grid: int) -> Tensor:
    """A square position table [P * P, D] -> [grid * grid, D], antialiased bicubic (as LLaVA-HR)."""
    old = math.isqrt(table.shape[0])
    if old == grid:
        return table
    square = table.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    square = F.interpolate(square, size=(grid, grid), mode="bicubic", antialias=True)
    return square.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(table.dtype)


class MultiPathVision(nn.Module):
    """LLaVA-HR's vision stage: [B, 3, S, S] pixels at input_image_size -> [B, N, D] tokens."""

    def __init__(self, args: LlavaArgs):
        super().__init__()
        hr = args.multipath
        v = args.vision
        if args.input_image_size // hr.slow.stride != v.grid_size:
            raise ValueError(
                f"slow map {args.input_image_size // hr.slow.stride} and fast grid {v.grid_size} differ; "
                "LLaVA-HR aligns them by resampling, which is not implemented"
            )
        self.fast_size = v.image_size
        self.fast = VisionTower(replace(v, image_size=hr.position_image_size))
        self.slow = ConvNext(hr.slow)
        self.adapter_layers = hr.adapter_layers
        self.adapters = nn.ModuleList(MrAdapter(v.hidden_size, hr.slow.dims[-1]) for _ in hr.adapter_layers)
        self.fusion = MultiPathFusion(v.hidden_size, hr.slow.dims[-1])
        # Derived from the CLIP position table whenever weights load (see `_resample_after_load`).
        self.register_buffer("patch_positions", torch.zeros(v.num_patches, v.hidden_size), persistent=False)
        self.register_load_state_dict_post_hook(_resample_after_load)

    def resample_positions(self) -> None:
        # Row 0 is CLS's position; CLS never enters LLaVA-HR's transformer.
        self.patch_positions = resample_positions(self.fast.position_embedding.weight.detach()[1:], self.fast_grid)

    @property
    def fast_grid(self) -> int:
        return math.isqrt(self.patch_positions.shape[0])

    def forward(
        self,
        pixel_values: Tensor,
        feature_layer: int,
        attn_layer: int | None = None,
        qk_layer: int | None = None,
        last_layer: bool = False,
    ) -> VisionOutput:
        """All ViT layers run (feature_layer must be the last, so `last_layer` changes nothing);
        attn_layer: also return that layer's attention probabilities over the patch tokens
        [B, H, N, N] (there is no CLS)."""
        if feature_layer != len(self.fast.layers) - 1 or qk_layer is not None:
            raise ValueError("LLaVA-HR's features are the last ViT layer's, and it has no CLS query/key probe")
        pixels = pixel_values.to(self.fast.patch_embedding.weight.dtype)
        slow = self.slow(pixels)  # [B, C_s, g, g]
        small = F.interpolate(pixels.float(), size=(self.fast_size,) * 2, mode="bilinear", align_corners=True)
        x = tokens_of(self.fast.patch_embedding(small.to(pixels.dtype)))
        x = self.fast.pre_layrnorm(x + self.patch_positions)
        out = VisionOutput(features=x)
        for index, layer in enumerate(self.fast.layers):
            x, probs = layer(x, return_probs=index == attn_layer)
            if probs is not None:
                out.attn_probs = probs
            if index in self.adapter_layers:
                x = self.adapters[self.adapter_layers.index(index)](x, slow)
        out.features = self.fusion(x, slow)
        return out


def _resample_after_load(module: MultiPathVision, incompatible_keys) -> None:
    module.resample_positions()
