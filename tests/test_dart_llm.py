"""DART in the LLM (dart-llm) against an oracle written from the paper's rule in plain loops, its
counts against the reference's TOKEN_TOPK arithmetic, and its hook in our prefill: the layer it
reads, the final norm, the question segment, original positions. Export == eager runs in
test_export (SCHEDULES), the fp16/bf16 fusable-attention checks in test_precision."""

import numpy as np
import pytest
import torch

from vtpexport.graph.decoder import Decoder, LayerAttention, Sequence
from vtpexport.pruning.dart_llm import dart_kept, dart_prefill_keep, per_pivot
from vtpexport.pruning.prefill import PrefillHook
from vtpexport.recipe import ScheduleSpec


def l1(x: np.ndarray) -> list[float]:
    return [float(np.abs(row).sum()) for row in x]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b) / (float(np.linalg.norm(a)) * float(np.linalg.norm(b)))


def dart_oracle(image_keys, text_keys, text_valid, image_hidden, text_hidden, per_pivot: int) -> list[int]:
    """Pivots: the (up to) 4 image tokens and 4 real question tokens of largest key L1 norm. Each
    pivot in turn, image pivots first, each kind by descending norm, takes `per_pivot` of the image
    tokens not kept yet, those whose hidden state has the lowest cosine with its own; a question
    pivot that does not exist (fewer than 4 real tokens) takes those of largest key norm."""
    n = len(image_keys)
    image_norm, text_norm = l1(image_keys), l1(text_keys)
    image_pivots = sorted(range(n), key=lambda i: -image_norm[i])[:4]
    real_text = [j for j in range(len(text_keys)) if text_valid[j]]
    text_pivots = sorted(real_text, key=lambda j: -text_norm[j])[:4]
    pivots = [image_hidden[i] for i in image_pivots] + [text_hidden[j] for j in text_pivots]
    pivots += [None] * (4 - len(text_pivots))
    kept = list(image_pivots)
    for pivot in pivots:
        candidates = [i for i in range(n) if i not in kept]
        if pivot is None:
            ranked = sorted(candidates, key=lambda i: -image_norm[i])
        else:
            ranked = sorted(candidates, key=lambda i: cosine(pivot, image_hidden[i]))
        kept += ranked[:per_pivot]
    return sorted(kept)


def test_dart_keeps_what_the_oracle_keeps_over_200_random_trials():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, t, c, d = int(rng.integers(0, 40)), int(rng.integers(1, 9)), int(rng.integers(2, 8)), int(rng.integers(2, 8))
        image_keys, text_keys = rng.standard_normal((n, c)), rng.standard_normal((t, c))
        image_hidden, text_hidden = rng.standard_normal((n, d)), rng.standard_normal((t, d))
        if trial % 4 == 0 and n:  # near-duplicate tokens, as neighbouring patches are
            image_hidden = image_hidden[rng.integers(0, max(n // 3, 1), n)] + 0.05 * rng.standard_normal((n, d))
        text_valid = rng.random(t) < 0.7 if trial % 3 == 0 else np.ones(t, dtype=bool)  # left padding or none
        pivots = min(4, n)
        quota = int(rng.integers(0, (n - pivots) // 8 + 1))
        tensors = [torch.from_numpy(a)[None] for a in (image_keys, text_keys, text_valid)]
        ours = dart_prefill_keep(
            *tensors, torch.from_numpy(image_hidden)[None], torch.from_numpy(text_hidden)[None], quota
        )
        expected = dart_oracle(image_keys, text_keys, text_valid, image_hidden, text_hidden, quota)
        assert ours[0].tolist() == expected, (trial, n, t, quota)
        assert len(expected) == pivots + 8 * quota


@pytest.mark.parametrize(
    ("n", "reduction", "kept"),
    [
        (576, 7 / 9, 4 + 8 * 16),  # the reference's max_num_trunction 128: 16 per pivot, 132 kept
        (576, 0.778, 4 + 8 * 15),  # its reduction_ratio 0.778 alone: floor(127.87 / 8) = 15
        (576, 0.0, 4 + 8 * 71),  # capped: 8 pivots' picks fit among the 572 non-pivots
        (576, 1.0, 4),
        (3, 0.5, 3),
        (0, 0.5, 0),
    ],
)
def test_kept_counts_follow_the_reference_arithmetic(n, reduction, kept):
    spec = ScheduleSpec("dart-llm", layer=2, ratio=reduction)
    assert dart_kept(spec, n) == kept
    assert spec.tokens_per_layer(n, 4) == [(n, n), (n, n), (kept, kept), (kept, kept)]


class Capture(PrefillHook):
    """An unpruned prefill's layer `layer`: its keys and its output."""

    def __init__(self, layer: int):
        super().__init__()
        self.layer = layer

    def after_layer(self, decoder: Decoder, index: int, seq: Sequence, attention: LayerAttention) -> Sequence:
        if index == self.layer:
            self.keys, self.output, self.seq = attention.k, seq.x, seq
        return seq


@pytest.mark.parametrize("layer", [1, 2])
def test_the_prefill_drops_before_layer_k_what_layer_k_minus_1_scores(tiny_models, layer):
    graph = tiny_models["tiny-llava-1.5"].graph
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(2, 36, graph.args.text.hidden_size, generator=generator)
    prefix, suffix = (
        torch.randint(0, 200, (2, 4), generator=generator),
        torch.randint(0, 200, (2, 7), generator=generator),
    )
    suffix_mask = torch.ones(2, 7, dtype=torch.long)
    suffix_mask[1, :2] = 0  # left padding in the question of row 1
    masks = (torch.ones(2, 4, dtype=torch.long), torch.ones(2, 36, dtype=torch.long), suffix_mask)
    spec = ScheduleSpec("dart-llm", layer=layer, ratio=0.5)
    capture = Capture(layer - 1)
    with torch.no_grad():
        seq = graph.decoder.prompt_sequence(prefix, image, suffix, *masks)
        graph.decoder.prefill(seq, hook=capture)
        pruned = graph.decoder.prefill(seq, spec)
        hidden = graph.decoder.norm(capture.output)
    keys = capture.keys.transpose(1, 2).flatten(2)  # [B, S, H_kv Dh]
    for row in range(2):
        expected = dart_oracle(
            keys[row, 4:40].double().numpy(),
            keys[row, 40:].double().numpy(),
            suffix_mask[row].bool().numpy(),
            hidden[row, 4:40].double().numpy(),
            hidden[row, 40:].double().numpy(),
            per_pivot(spec, 36),
        )
        assert pruned.kept_ids[layer - 1][row].tolist() == expected
    # Layers before K saw every token; from K on, the kept ones, at their original positions.
    caches = pruned.caches
    assert [c.key.shape[2] for c in caches] == [47] * layer + [4 + 20 + 7] * (4 - layer)
    kept = pruned.kept_ids[layer - 1][0]
    assert caches[layer].key_positions[0, 4:24].tolist() == (4 + kept).tolist()
