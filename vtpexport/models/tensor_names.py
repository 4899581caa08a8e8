"""Checkpoint tensor names <-> our module names, per checkpoint layout.

Checkpoints on the Hub (transformers 4.x) name tensors `language_model.model.*`,
`vision_tower.vision_model.*`, `multi_modal_projector.*`; transformers 5.x may write
`model.language_model.*`, `model.vision_tower.*`, `lm_head.*`. All of them map onto our
module names here, at load time, so `forward` never cares. LLaVA-HR keeps original LLaVA's
layout. Each family declares which pair it uses (`models.families`).
"""

from __future__ import annotations

import re

# (pattern on the checkpoint name, replacement giving our name); first match wins.
_TO_OURS = [
    (r"^(?:model\.)?language_model\.lm_head\.", "decoder.lm_head."),
    (r"^lm_head\.", "decoder.lm_head."),
    (r"^(?:model\.)?language_model\.(?:model\.)?", "decoder."),
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?embeddings\.", "vision."),
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?encoder\.", "vision."),
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?", "vision."),
    (r"^(?:model\.)?multi_modal_projector\.", "projector."),
    (r"^(?:model\.)?image_newline$", "image_newline"),
]
# Buffers that older checkpoints store and we recompute.
_IGNORED = re.compile(r"(position_ids|rotary_emb\.inv_freq)$")


def our_name(checkpoint_name: str) -> str | None:
    if _IGNORED.search(checkpoint_name):
        return None
    for pattern, replacement in _TO_OURS:
        name, hits = re.subn(pattern, replacement, checkpoint_name)
        if hits:
            return name
    return checkpoint_name


def hub_name(our: str) -> str:
    """Our parameter name -> the transformers 4.x Hub layout (what most users have on disk)."""
    if our.startswith("decoder.lm_head."):
        return "language_model." + our[len("decoder.") :]
    if our.startswith("decoder."):
        return "language_model.model." + our[len("decoder.") :]
    if our.startswith("vision.layers."):
        return "vision_tower.vision_model.encoder." + our[len("vision.") :]
    if our.startswith(("vision.patch_embedding", "vision.class_embedding", "vision.position_embedding")):
        return "vision_tower.vision_model.embeddings." + our[len("vision.") :]
    if our.startswith("vision."):
        return "vision_tower.vision_model." + our[len("vision.") :]
    if our.startswith("projector."):
        return "multi_modal_projector." + our[len("projector.") :]
    return our


# LLaVA-HR, original-LLaVA layout: (checkpoint prefix, our prefix); first match wins.
_HR_TOWER = "model.vision_tower."
_HR_CLIP = _HR_TOWER + "fast_vision_tower.vision_tower.vision_model."
_HR_CONVNEXT = _HR_TOWER + "slow_vision_tower.vision_tower."
_HR_TO_OURS = [
    (_HR_CLIP + "embeddings.", "vision.fast."),
    (_HR_CLIP + "encoder.", "vision.fast."),
    (_HR_CLIP, "vision.fast."),
    (_HR_CONVNEXT, "vision.slow."),
    (_HR_TOWER + "align_stages_latent.", "vision.adapters."),
    (_HR_TOWER + "align_stages.0.", "vision.fusion."),
    ("model.mm_projector.0.", "projector.linear_1."),
    ("model.mm_projector.2.", "projector.linear_2."),
    ("lm_head.", "decoder.lm_head."),
    ("model.", "decoder."),
]
# The ConvNeXt classifier head, which LLaVA-HR never runs, and recomputed buffers.
_HR_IGNORED = re.compile(rf"^{re.escape(_HR_CONVNEXT)}head\.|(position_ids|rotary_emb\.inv_freq)$")
# LLaVA-HR's ConvNeXt copy calls the layer scale `weight` where timm says `gamma`.
_HR_LAYER_SCALE = re.compile(r"(stages\.\d+\.blocks\.\d+)\.weight$")
_OUR_LAYER_SCALE = re.compile(r"(stages\.\d+\.blocks\.\d+)\.gamma$")


def hr_our_name(checkpoint_name: str) -> str | None:
    """A LLaVA-HR original-layout tensor name -> ours (None: not a parameter we load)."""
    if _HR_IGNORED.search(checkpoint_name):
        return None
    for prefix, ours in _HR_TO_OURS:
        if checkpoint_name.startswith(prefix):
            name = ours + checkpoint_name[len(prefix) :]
            return _HR_LAYER_SCALE.sub(r"\1.gamma", name) if ours == "vision.slow." else name
    return checkpoint_name


def hr_checkpoint_name(our: str) -> str:
    """Our parameter name -> LLaVA-HR's original layout."""
    if our.startswith("vision.fast.layers."):
        return _HR_CLIP + "encoder." + our[len("vision.fast.") :]
    if our.startswith(("vision.fast.patch_embedding", "vision.fast.class_embedding", "vision.fast.position_embedding")):
        return _HR_CLIP + "embeddings." + our[len("vision.fast.") :]
    if our.startswith("vision.slow."):
        return _OUR_LAYER_SCALE.sub(r"\1.weight", _HR_CONVNEXT + our[len("vision.slow.") :])
    for prefix, ours in _HR_TO_OURS[2:]:  # the embeddings / encoder rows are handled above
        if our.startswith(ours):
            return prefix + our[len(ours) :]
    return our
