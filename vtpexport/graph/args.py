"""Architecture arguments of our graph modules, one frozen dataclass per sub-model.

They are filled from a checkpoint's config.json by `vtpexport.models.families` and are the
only thing our modules read: no transformers config object reaches a forward pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


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
class LlavaArgs:
    family: str  # "llava-1.5" | "llava-next"
    vision: VisionArgs
    text: TextArgs
    vision_feature_layer: int = -2
    # "default" drops the CLS token before the projector, "full" keeps it.
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    image_token_id: int = 32000
    # LLaVA-NeXT only: candidate (height, width) resolutions of the anyres tiling.
    image_grid_pinpoints: tuple[tuple[int, int], ...] = field(default_factory=tuple)

    @property
    def feature_layer_index(self) -> int:
        """0-based index of the CLIP encoder layer whose output LLaVA uses."""
        layer = self.vision_feature_layer
        # hidden_states[0] is the embedding output, so hidden_states[-2] is layer L-2's output.
        return layer - 1 if layer >= 0 else self.vision.num_layers + layer

    @property
    def tokens_per_tile(self) -> int:
        extra = 1 if self.vision_feature_select_strategy == "full" else 0
        return self.vision.num_patches + extra

    def config_hash(self) -> str:
        """A short, stable hash of the architecture, used to tie recipes to a model."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
