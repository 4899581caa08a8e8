"""Architecture arguments of our graph modules, one frozen dataclass per sub-model.

They are filled from a checkpoint's config.json by `vtpexport.models.families` and are the
only thing our modules read: no transformers config object reaches a forward pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from .layout import AnyresTiles, ImageLayout, SingleTile


@dataclass(frozen=True)
class VisionArgs:
    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    num_channels: int = 3

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class TextArgs:
    vocab_size: int = 32064
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"


@dataclass(frozen=True)
class ConvNextArgs:
    """A timm ConvNeXt (patch stem, four stages), the slow path of LLaVA-HR."""

    depths: tuple[int, ...] = (3, 3, 27, 3)
    dims: tuple[int, ...] = (192, 384, 768, 1536)
    layer_norm_eps: float = 1e-6
    kernel_size: int = 7
    mlp_ratio: int = 4
    stem_patch_size: int = 4
    num_channels: int = 3

    @property
    def stride(self) -> int:
        """Input pixels per output cell: the stem, then a 2x downsample before stages 1..3."""
        return self.stem_patch_size * 2 ** (len(self.dims) - 1)


@dataclass(frozen=True)
class MultiPathArgs:
    """LLaVA-HR's mixture-of-resolution vision: ConvNeXt on the full image (slow path), the
    CLIP ViT (`LlavaArgs.vision`, at its 448 input) on a downsampled copy (fast path)."""

    slow: ConvNextArgs
    image_size: int = 1024  # the slow path's input (config input_image_size)
    position_image_size: int = 336  # the CLIP's pretraining size, which its position table is for
    adapter_layers: tuple[int, ...] = (5, 11, 17)  # 0-based CLIP layers followed by an MR-adapter


@dataclass(frozen=True)
class LlavaArgs:
    family: str  # "llava-1.5" | "llava-next" | "llava-hr"
    vision: VisionArgs
    text: TextArgs
    vision_feature_layer: int = -2
    # "default" drops the CLS token before the projector, "full" keeps it.
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    # None: no image token in the vocabulary; `<image>` is spliced at the text marker (original LLaVA).
    image_token_id: int | None = 32000
    # LLaVA-NeXT only: candidate (height, width) resolutions of the anyres tiling.
    image_grid_pinpoints: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    # LLaVA-HR only: the slow path and the adapters; `vision` is then the fast path.
    multipath: MultiPathArgs | None = None

    @property
    def layout(self) -> ImageLayout:
        """How an image becomes visual tokens: anyres tiles where the config lists grid pinpoints."""
        return AnyresTiles(self) if self.image_grid_pinpoints else SingleTile(self)

    @property
    def cls_token(self) -> bool:
        """Whether the vision features carry CLIP's CLS token (LLaVA-HR drops it before the ViT)."""
        return self.multipath is None

    @property
    def input_image_size(self) -> int:
        """Side of the square pixel input of the vision stage."""
        return self.multipath.image_size if self.multipath else self.vision.image_size

    @property
    def feature_layer_index(self) -> int:
        """0-based index of the CLIP encoder layer whose output LLaVA uses."""
        layer = self.vision_feature_layer
        # hidden_states[0] is the embedding output, so hidden_states[-2] is layer L-2's output.
        return layer - 1 if layer >= 0 else self.vision.num_layers + layer

    @property
    def tokens_per_tile(self) -> int:
        extra = 1 if self.cls_token and self.vision_feature_select_strategy == "full" else 0
        return self.vision.num_patches + extra

    def config_hash(self) -> str:
        """A short, stable hash of the architecture, used to tie recipes to a model."""
        fields = asdict(self)
        if self.multipath is None:
            del fields["multipath"]  # so that adding the field changed no existing family's hash
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
