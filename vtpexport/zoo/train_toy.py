"""Train the built-in `toy` model: a small LLaVA-1.5 (CLIP ViT, feature layer -2, MLP
projector, Llama decoder) on the toy task of `toy_data`, reproducible from a seed.

Two stages, as LLaVA itself is trained:
1. the vision tower alone, on a dense per-patch target (colour, shape, size, row, column of
   whatever fills each patch cell) - 144 labels per image make this fast;
2. projector + decoder on the questions, vision tower frozen, with the exact prompt our
   runtime builds (chat template -> tokenizer -> 144 image placeholders), one question of
   each type per image plus extra position and relative ones, then a warm restart at a
   lower rate ("refine").

Stage 2 also hides image tokens as pruning does (a hidden token's key leaves the attention
from some decoder layer on; the positions of the others stay):
- on `background_drop` of the images, a random share (up to `background_drop_max`) of the
  background cells, from a random layer on, so the decoder cannot lean on particular
  background cells (this alone raised held-out accuracy from 92.8% to 95.8% in one run);
- on `image_cutoff` of the images, every image token, from a random layer from
  `image_cutoff_from` on, so the image has to be read in the first layers - as FastV
  measured in LLaVA-1.5, whose deep layers barely attend to the image. Without it the
  4-layer toy read the image until its last layer, and FitPrune's late drops (which on these
  sparse scenes fall on bottom-row objects: its visual-row term favours early raster
  positions under causal attention) cost 6% of its accuracy at a 0.45 budget.
Objects are never hidden alone: a method that keeps the object tokens loses nothing, one that
drops them before the image has been read loses the answer.

Stage 2 packs several questions about one image into one sequence: [prefix | image | q1 a1 |
q2 a2 | ...], each question seeing the prefix and image but not the other questions, and
starting at the position it has in a single-question prompt. Every question is thus trained
exactly as the runtime asks it, while the image tokens are computed once per image.

    python -m vtpexport.zoo.train_toy --out vtpexport/zoo/toy

writes the model in the Hugging Face LLaVA-1.5 layout and `training_report.json` (held-out
accuracy per question type through our eager runtime, the blind baseline, the wall time).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import Tensor, nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from ..files import folder_atomically
from ..graph.decoder import Sequence
from ..graph.llava import LlavaGraph
from ..models.builtin import SPECIALS, init_weights, processor_for, save_model, wrap_tokenizer
from ..models.checkpoint import load_weights
from ..models.families import FAMILIES, args_from_config
from ..models.prompt import format_prompt, split_prompt
from ..models.question_templates import TEMPLATES_FILE
from ..pruning.prefill import PrefillHook
from . import toy_data
from .toy_data import COLOURS, GRID, QUESTION_MAKERS, QUESTION_TYPES, SHAPES, SIZES, Question, ToyObject

IMAGE_TOKEN_ID = SPECIALS.index("<image>")
PAD_TOKEN_ID = SPECIALS.index("<pad>")
EVAL_SEED = 1234  # the held-out set `python -m vtpexport.zoo.toy_data` writes by default
IGNORE = -100


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    vision_width: int = 64
    vision_layers: int = 3
    text_width: int = 96
    text_layers: int = 4
    heads: int = 4
    vision_batch: int = 16
    vision_steps: int = 150
    vision_lr: float = 3e-3
    images_per_batch: int = 16
    text_steps: int = 2400
    text_lr: float = 2e-3
    # A warm restart of stage 2 at a lower peak: the object-binding questions (exist,
    # position, relative) are learnt late, after the attribute questions.
    refine_steps: int = 800
    refine_lr: float = 1e-3
    refine_questions_per_type: int = 2  # more answers per image for the same image tokens
    # Extra questions per image for the types that need two hops (find the named object,
    # then read its place): they are learnt last and are the most fragile under pruning.
    extra_questions: tuple[tuple[str, int], ...] = (("position", 2), ("relative", 3))
    # Token hiding in stage 2 (see the module docstring). Background: share of the images,
    # and the largest share of its cells hidden (each image draws a share up to it, and a layer).
    background_drop: float = 0.8
    background_drop_max: float = 0.9
    # Whole image: share of the images, and the earliest layer it may vanish from.
    image_cutoff: float = 0.5
    image_cutoff_from: int = 1
    blind_steps: int = 400
    warmup_steps: int = 50
    threads: int = 2
    eval_count: int = 400


def word_tokenizer(words: list[str]):
    """A lower-casing word-level tokenizer over the task's words (unknown words -> <unk>)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer.add_special_tokens(SPECIALS)
    return wrap_tokenizer(tokenizer)


def toy_config(settings: TrainSettings, vocab_size: int) -> LlavaConfig:
    vision = CLIPVisionConfig(
        image_size=toy_data.IMAGE_SIZE,
        patch_size=toy_data.CELL,
        hidden_size=settings.vision_width,
        intermediate_size=4 * settings.vision_width,
        num_hidden_layers=settings.vision_layers,
        num_attention_heads=settings.heads,
        projection_dim=settings.vision_width,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=settings.text_width,
        intermediate_size=3 * settings.text_width,
        num_hidden_layers=settings.text_layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=SPECIALS.index("<s>"),
        eos_token_id=SPECIALS.index("</s>"),
        pad_token_id=PAD_TOKEN_ID,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=GRID * GRID,
        pad_token_id=PAD_TOKEN_ID,
        tie_word_embeddings=False,
    )


PATCH_CLASSES = (len(COLOURS) + 1, len(SHAPES) + 1, len(SIZES) + 1, GRID, GRID)


def patch_targets(scene: list[ToyObject]) -> Tensor:
    """[GRID * GRID, 5] class of each patch cell: colour, shape, size (0 = background), row, column."""
    cells = torch.zeros(GRID * GRID, 5, dtype=torch.long)
    cells[:, 3] = torch.arange(GRID * GRID) // GRID
    cells[:, 4] = torch.arange(GRID * GRID) % GRID
    for obj in scene:
        cell = obj.row * GRID + obj.column
        cells[cell, 0] = list(COLOURS).index(obj.colour) + 1
        cells[cell, 1] = SHAPES.index(obj.shape) + 1
        cells[cell, 2] = SIZES.index(obj.size) + 1
    return cells


class Toolkit:
    """Tokenizer, processor and prompt cache shared by training and evaluation."""

    def __init__(self, config: LlavaConfig):
        self.config = config
        self.tokenizer = word_tokenizer(toy_data.vocabulary())
        self.template = FAMILIES["llava-1.5"].default_chat_template
        self.processor = processor_for(config, self.tokenizer)
        images = self.processor.image_processor
        self._mean = np.array(images.image_mean, dtype=np.float32)
        self._std = np.array(images.image_std, dtype=np.float32)
        self._prompts: dict[str, tuple[list[int], list[int]]] = {}

    def prompt(self, question: str) -> tuple[list[int], list[int]]:
        """Prefix and suffix ids around the image, exactly as the runtime builds them."""
        if question not in self._prompts:
            text = format_prompt(self.tokenizer, question, self.template)
            parts = split_prompt(self.tokenizer, text, IMAGE_TOKEN_ID)
            self._prompts[question] = (parts.prefix_ids, parts.suffix_ids)
        return self._prompts[question]

    def answer_id(self, answer: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(answer)

    def pixels(self, scenes: list[list[ToyObject]]) -> Tensor:
        """[B, 3, H, W] as the image processor makes them (rendered at its size, so no resize)."""
        images = np.stack([np.asarray(toy_data.render(scene), dtype=np.float32) / 255.0 for scene in scenes])
        return torch.from_numpy(((images - self._mean) / self._std).transpose(0, 3, 1, 2).copy())


def step_rng(seed: int, stage: str, step: int) -> random.Random:
    # String seeds are hashed with sha512: the same stream on every run and platform.
    return random.Random(f"{seed}:{stage}:{step}")


def questions_about(
    rng: random.Random, scene: list[ToyObject], per_type: int = 1, extra: tuple[tuple[str, int], ...] = ()
) -> list[Question]:
    """`per_type` questions of every type that applies to the scene, then `extra` more of some types."""
    questions = [make(rng, scene) for _ in range(per_type) for make in QUESTION_MAKERS.values()]
    questions += [QUESTION_MAKERS[kind](rng, scene) for kind, count in extra for _ in range(count)]
    return [q for q in questions if q is not None]


@dataclass
class PackedBatch:
    """Images with several questions each: [prefix | image | (suffix answer) per question]."""

    prefix_ids: Tensor  # [B, P], identical rows
    tail_ids: Tensor  # [B, T] the questions' suffixes and answers, right-padded
    tail_positions: Tensor  # [B, T] RoPE position of each tail token in its own single prompt
    tail_block: Tensor  # [B, T] which question a token belongs to (1..), 0 = padding
    targets: Tensor  # [B, T] next token to predict, IGNORE elsewhere
    # [B, N] first decoder layer that no longer sees each image token (N layers = all see it)
    hidden_from: Tensor | None
    scenes: list[list[ToyObject]]
    questions: list[list[Question]]


def pack(
    kit: Toolkit,
    scenes: list[list[ToyObject]],
    questions: list[list[Question]],
    num_image: int,
    hidden_from: Tensor | None = None,
) -> PackedBatch:
    prefixes, tails = [], []
    for per_image in questions:
        ids, positions, blocks, targets = [], [], [], []
        for block, question in enumerate(per_image, start=1):
            prefix, suffix = kit.prompt(question.text)
            start = len(prefix) + num_image
            answer = kit.answer_id(question.answer)
            ids += suffix + [answer]
            positions += range(start, start + len(suffix) + 1)
            blocks += [block] * (len(suffix) + 1)
            targets += [IGNORE] * (len(suffix) - 1) + [answer, kit.tokenizer.eos_token_id]
            prefixes.append(prefix)
        tails.append((ids, positions, blocks, targets))
    if any(p != prefixes[0] for p in prefixes):
        raise ValueError("the chat template put question text before the image; packing needs a shared prefix")
    width = max(len(t[0]) for t in tails)
    rows = len(tails)
    tail_ids = torch.full((rows, width), PAD_TOKEN_ID, dtype=torch.long)
    tail_positions = torch.zeros((rows, width), dtype=torch.long)
    tail_block = torch.zeros((rows, width), dtype=torch.long)
    targets = torch.full((rows, width), IGNORE, dtype=torch.long)
    for i, (ids, positions, blocks, target) in enumerate(tails):
        n = len(ids)
        tail_ids[i, :n], tail_positions[i, :n] = torch.tensor(ids), torch.tensor(positions)
        tail_block[i, :n], targets[i, :n] = torch.tensor(blocks), torch.tensor(target)
    prefix_ids = torch.tensor(prefixes[0])[None].expand(rows, -1)
    return PackedBatch(prefix_ids, tail_ids, tail_positions, tail_block, targets, hidden_from, scenes, questions)


def hidden_image_tokens(
    rng: random.Random, scenes: list[list[ToyObject]], settings: TrainSettings, num_layers: int
) -> Tensor:
    """[B, GRID * GRID] first layer that no longer sees each cell's token (num_layers: never).

    A `background_drop` share of the images loses a random subset (share drawn up to
    `background_drop_max`) of its background cells from a random layer on; then an
    `image_cutoff` share loses every token from a random layer >= `image_cutoff_from` on.
    Objects only ever vanish with the whole image."""
    hidden_from = torch.full((len(scenes), GRID * GRID), num_layers, dtype=torch.long)
    for row, scene in enumerate(scenes):
        if rng.random() >= settings.background_drop:
            continue
        objects = {obj.row * GRID + obj.column for obj in scene}
        background = [cell for cell in range(GRID * GRID) if cell not in objects]
        hidden = rng.sample(background, round(rng.uniform(0, settings.background_drop_max) * len(background)))
        hidden_from[row, hidden] = rng.randrange(num_layers)
    earliest_cutoff = min(settings.image_cutoff_from, num_layers - 1)
    for row in range(len(scenes)):
        if rng.random() < settings.image_cutoff:
            hidden_from[row] = hidden_from[row].clamp(max=rng.randrange(earliest_cutoff, num_layers))
    return hidden_from


class PackedAttention(PrefillHook):
    """The training mask of packed questions: a tail token sees the shared head and earlier
    tokens of its own question, nothing else; with `hidden_from` [B, S], a token is no longer
    seen from that layer on."""

    def __init__(self, allowed: Tensor, hidden_from: Tensor | None):
        super().__init__()
        self.allowed = allowed  # [B, S, S]
        self.hidden_from = hidden_from

    def attention_bias(self, index: int, seq: Sequence, bias: Tensor) -> Tensor:
        seen = self.allowed if self.hidden_from is None else self.allowed & (self.hidden_from > index)[:, None, :]
        return torch.zeros(seen.shape, dtype=bias.dtype, device=bias.device).masked_fill(
            ~seen, torch.finfo(bias.dtype).min
        )[:, None]


def packed_logits(graph: LlavaGraph, batch: PackedBatch, image_embeds: Tensor | None) -> Tensor:
    """Logits [B, T, V] at the tail tokens; image_embeds [B, N, D] or None (blind)."""
    decoder = graph.decoder
    rows, p = batch.prefix_ids.shape
    parts = [decoder.embed_tokens(batch.prefix_ids)]
    if image_embeds is not None:
        parts.append(image_embeds)
    n = 0 if image_embeds is None else image_embeds.shape[1]
    head_len = p + n
    x = torch.cat([*parts, decoder.embed_tokens(batch.tail_ids)], dim=1)
    head_positions = torch.arange(head_len)[None].expand(rows, -1)
    positions = torch.cat([head_positions, batch.tail_positions], dim=1)
    block = torch.cat([torch.zeros_like(head_positions), batch.tail_block], dim=1)
    causal = positions[:, None, :] <= positions[:, :, None]
    same_question = (block[:, None, :] == 0) | (block[:, None, :] == block[:, :, None])
    hidden_from = None
    if image_embeds is not None and batch.hidden_from is not None:
        layers = len(decoder.layers)
        head, tail = torch.full((rows, p), layers), torch.full(batch.tail_ids.shape, layers)
        hidden_from = torch.cat([head, batch.hidden_from, tail], dim=1)
    key_mask = torch.ones(positions.shape, dtype=torch.long)
    seq = Sequence(x, key_mask, positions, torch.arange(n)[None].expand(rows, -1), p, n)
    seq = decoder.run_layers(seq, PackedAttention(causal & same_question, hidden_from))
    return decoder.lm_head(decoder.norm(seq.x[:, head_len:]))


def image_embeddings(graph: LlavaGraph, kit: Toolkit, scenes: list[list[ToyObject]]) -> Tensor:
    return graph.tile_features(kit.pixels(scenes))


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimise(parameters, steps: int, peak: float, warmup: int, loss_at, log, name: str, probe=None) -> None:
    """AdamW with warmup and cosine decay; `probe(step)` (if given) logs progress every 250 steps."""
    parameters = [p for p in parameters if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=peak, weight_decay=0.01)
    started = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak, warmup)
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"{name} step {step}/{steps} loss {loss.item():.4f} ({time.time() - started:.0f} s)")
        if probe is not None and step % 250 == 249:
            log(f"{name} step {step} held-out {probe()}")


def train_vision(graph: LlavaGraph, kit: Toolkit, settings: TrainSettings, log) -> None:
    """Stage 1: the vision tower's feature layer learns to name what fills each patch."""
    heads = nn.ModuleList(nn.Linear(settings.vision_width, n) for n in PATCH_CLASSES)
    feature_layer = graph.args.feature_layer_index

    def loss_at(step: int) -> Tensor:
        rng = step_rng(settings.seed, "vision", step)
        scenes = [toy_data.random_scene(rng) for _ in range(settings.vision_batch)]
        targets = torch.stack([patch_targets(scene) for scene in scenes])  # [B, N, 5]
        features = graph.vision(kit.pixels(scenes), feature_layer=feature_layer).features[:, 1:]
        losses = [F.cross_entropy(h(features).flatten(0, 1), targets[..., i].flatten()) for i, h in enumerate(heads)]
        return torch.stack(losses).sum()

    parameters = [*graph.vision.parameters(), *heads.parameters()]
    optimise(parameters, settings.vision_steps, settings.vision_lr, settings.warmup_steps, loss_at, log, "vision")


def question_batch(kit: Toolkit, settings: TrainSettings, stage: str, step: int, num_image: int) -> PackedBatch:
    rng = step_rng(settings.seed, stage, step)
    scenes = [toy_data.random_scene(rng) for _ in range(settings.images_per_batch)]
    per_type = settings.refine_questions_per_type if stage == "refine" else 1
    questions = [questions_about(rng, scene, per_type, settings.extra_questions) for scene in scenes]
    hidden_from = hidden_image_tokens(rng, scenes, settings, settings.text_layers) if num_image else None
    return pack(kit, scenes, questions, num_image, hidden_from)


def answer_loss(logits: Tensor, batch: PackedBatch) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)


def train_questions(graph: LlavaGraph, kit: Toolkit, settings: TrainSettings, log, stage: str) -> None:
    """Stage 2 ("questions", then "refine") or the blind baseline ("blind"): the decoder
    answers from the prompt; each stage draws its own stream of samples."""
    with_image = stage != "blind"
    num_image = graph.args.vision.num_patches if with_image else 0

    def loss_at(step: int) -> Tensor:
        batch = question_batch(kit, settings, stage, step, num_image)
        with torch.no_grad():  # the vision tower is frozen; the projector trains
            features = graph.vision(kit.pixels(batch.scenes), feature_layer=graph.args.feature_layer_index).features
        embeds = graph.projector(features[:, 1:]) if with_image else None
        return answer_loss(packed_logits(graph, batch, embeds), batch)

    held_out = toy_data.samples(EVAL_SEED, settings.eval_count)

    def probe() -> dict[str, float]:
        scores = packed_accuracy(graph.eval(), kit, held_out, with_image)
        graph.train()
        return scores

    steps, peak = {
        "questions": (settings.text_steps, settings.text_lr),
        "refine": (settings.refine_steps, settings.refine_lr),
        "blind": (settings.blind_steps, settings.text_lr),
    }[stage]
    optimise(graph.parameters(), steps, peak, settings.warmup_steps, loss_at, log, stage, probe)


@torch.no_grad()
def packed_accuracy(graph: LlavaGraph, kit: Toolkit, samples, with_image: bool) -> dict[str, float]:
    """Accuracy per question type of the answer word (argmax), one question per image."""
    num_image = graph.args.vision.num_patches if with_image else 0
    right: dict[str, list[bool]] = {t: [] for t in QUESTION_TYPES}
    for start in range(0, len(samples), 64):
        chunk = samples[start : start + 64]
        batch = pack(kit, [s for s, _ in chunk], [[q] for _, q in chunk], num_image)
        embeds = image_embeddings(graph, kit, batch.scenes) if with_image else None
        logits = packed_logits(graph, batch, embeds)
        answer_at = (batch.targets != IGNORE).long().argmax(dim=1)  # first target = the answer word
        predicted = logits[torch.arange(len(chunk)), answer_at].argmax(-1)
        for (_, question), token in zip(chunk, predicted.tolist(), strict=True):
            right[question.type].append(token == kit.answer_id(question.answer))
    return summarise(right)


def summarise(right: dict[str, list[bool]]) -> dict[str, float]:
    scores = {t: round(sum(v) / len(v), 4) for t, v in right.items() if v}
    every = [x for v in right.values() for x in v]
    scores["overall"] = round(sum(every) / len(every), 4)
    return scores


def build_model(settings: TrainSettings) -> tuple[LlavaGraph, Toolkit]:
    words = toy_data.vocabulary()
    config = toy_config(settings, len(SPECIALS) + len(words))
    torch.manual_seed(settings.seed)  # the probe heads of stage 1 draw from the global generator
    graph = LlavaGraph(args_from_config(config))
    init_weights(graph, settings.seed)
    return graph, Toolkit(config)


def configure_determinism(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def train(settings: TrainSettings, log=print, resume_from: Path | None = None) -> tuple[LlavaGraph, Toolkit]:
    """Both stages; the same settings give the same weights.

    resume_from: a model written with the same settings but refine_steps=0, i.e. the exact
    state before the refine stage; training continues from there with the refine stage only.
    """
    configure_determinism(settings.threads)
    graph, kit = build_model(settings)
    graph.train()
    if resume_from is None:
        train_vision(graph, kit, settings, log)
        graph.vision.requires_grad_(False)
        train_questions(graph, kit, settings, log, "questions")
    else:
        load_weights(graph, resume_from, torch.float32)
        graph.vision.requires_grad_(False)
    if settings.refine_steps:
        train_questions(graph, kit, settings, log, "refine")
    graph.requires_grad_(True)
    return graph.eval(), kit


def train_blind(settings: TrainSettings, log=print) -> dict[str, float]:
    """The same decoder trained and evaluated on the questions alone (no image tokens)."""
    configure_determinism(settings.threads)
    graph, kit = build_model(settings)
    train_questions(graph, kit, settings, log, "blind")
    return packed_accuracy(graph.eval(), kit, toy_data.samples(EVAL_SEED, settings.eval_count), with_image=False)


def runtime_accuracy(folder: Path, count: int) -> dict[str, float]:
    """Held-out accuracy through the path users take: our loader and eager runtime."""
    from ..models.loader import load_model
    from ..runtime.eager import greedy_generate, prepare

    loaded = load_model(str(folder))
    right: dict[str, list[bool]] = {t: [] for t in QUESTION_TYPES}
    held_out = toy_data.samples(EVAL_SEED, count)
    for start in range(0, count, 32):
        chunk = held_out[start : start + 32]
        images = [toy_data.render(scene) for scene, _ in chunk]
        batch = prepare(loaded, images, [q.text for _, q in chunk], max_new_tokens=4)
        for (_, question), tokens in zip(chunk, greedy_generate(loaded, batch, 4), strict=True):
            answer = loaded.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            right[question.type].append(answer == question.answer)
    return summarise(right)


def parse_extra_questions(_context, _parameter, values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    extra = []
    for value in values:
        kind, _, count = value.partition("=")
        if kind not in QUESTION_TYPES or not count.isdigit():
            raise click.BadParameter(f"{value!r}: expected TYPE=N with TYPE one of {', '.join(QUESTION_TYPES)}")
        extra.append((kind, int(count)))
    return tuple(extra)


def setting_option(flag: str, kind, help: str | None = None):
    """A command-line option for the TrainSettings field the flag names, with that default."""
    default = getattr(TrainSettings, flag.removeprefix("--").replace("-", "_"))
    return click.option(flag, type=kind, default=default, show_default=True, help=help)


SHARE = click.FloatRange(0, 1)


@click.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model folder to write (replaced).")
@setting_option("--seed", int)
@setting_option("--text-width", int)
@setting_option("--text-layers", click.IntRange(min=2), "Decoder layers.")
@click.option(
    "--extra-questions",
    multiple=True,
    default=[f"{kind}={count}" for kind, count in TrainSettings.extra_questions],
    show_default=True,
    callback=parse_extra_questions,
    help="TYPE=N: N more questions of TYPE per training image (repeatable).",
)
@setting_option("--images-per-batch", int, "Images per stage-2 step (each with its packed questions).")
@setting_option("--text-steps", int)
@setting_option("--vision-steps", int)
@setting_option("--blind-steps", int)
@setting_option("--text-lr", float)
@setting_option("--refine-steps", int)
@setting_option("--refine-lr", float)
@setting_option("--background-drop", SHARE, "Share of stage-2 images whose background cells are thinned.")
@setting_option("--background-drop-max", SHARE, "Largest share of an image's background cells hidden.")
@setting_option("--image-cutoff", SHARE, "Share of stage-2 images hidden from every layer after a random one.")
@setting_option("--image-cutoff-from", click.IntRange(min=1), "Earliest decoder layer an image may be hidden from.")
@setting_option("--threads", int)
@click.option(
    "--resume-from",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A model this command wrote with the same settings and --refine-steps 0: run only the refine stage.",
)
def main(out: Path, resume_from: Path | None, **options) -> None:
    """Train the toy LLaVA and write it (with its measured accuracy) to --out."""
    settings = TrainSettings(**options)
    started = time.time()
    graph, kit = train(settings, resume_from=resume_from)
    train_seconds = time.time() - started
    if resume_from is not None:  # count the time that produced the resumed state too
        train_seconds += json.loads((resume_from / "training_report.json").read_text())["train_seconds"]
    with folder_atomically(
        out, True, "the model", lambda folder: (folder / "training_report.json").is_file()
    ) as staging:
        save_model(graph, kit.config, kit.tokenizer, staging)
        report = {
            "settings": asdict(settings),
            "train_seconds": round(train_seconds),
            "held_out": {"seed": EVAL_SEED, "count": settings.eval_count},
            "accuracy": runtime_accuracy(staging, settings.eval_count),
            "blind_accuracy": train_blind(settings),
        }
        (staging / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / TEMPLATES_FILE).write_text(json.dumps(toy_data.question_templates(), indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
