"""The toy visual question answering task: sparse scenes of coloured shapes on a patch grid.

Every object fills one patch cell of the vision tower, so an image of GRID x GRID cells is
mostly background tokens: a pruning method that keeps the object tokens loses nothing, one
that drops them loses the answer. Everything is reproducible from a seed.

    python -m vtpexport.zoo.toy_data --out DIR --count N --seed S

writes DIR/images/*.png and DIR/data.jsonl with rows {"image", "question", "answer", "type"}.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import click
from PIL import Image, ImageDraw

from ..errors import UserError
from ..files import folder_atomically

GRID = 12  # cells per side: 144 visual tokens
CELL = 16  # pixels per cell = the vision tower's patch size
IMAGE_SIZE = GRID * CELL
BACKGROUND = (30, 30, 30)
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("big", "small")
MIN_OBJECTS, MAX_OBJECTS = 2, 6
# Thirds of the grid for the position questions.
COLUMN_THIRDS = ("left", "middle", "right")
ROW_THIRDS = ("top", "middle", "bottom")

QUESTION_TYPES = ("colour", "shape", "count", "total", "exist", "position", "relative", "size")


@dataclass(frozen=True)
class ToyObject:
    colour: str
    shape: str
    size: str
    row: int
    column: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    type: str


def random_scene(rng: random.Random) -> list[ToyObject]:
    """2..6 objects in distinct cells, each (colour, shape) pair at most once, so 'the red
    circle' always names one object."""
    count = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    pairs = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count)
    cells = rng.sample(range(GRID * GRID), count)
    return [
        ToyObject(colour, shape, rng.choice(SIZES), cell // GRID, cell % GRID)
        for (colour, shape), cell in zip(pairs, cells, strict=True)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, obj: ToyObject) -> None:
    margin = 1 if obj.size == "big" else 4
    x0, y0 = obj.column * CELL + margin, obj.row * CELL + margin
    x1, y1 = (obj.column + 1) * CELL - 1 - margin, (obj.row + 1) * CELL - 1 - margin
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        bar = max(2, (x1 - x0 + 1) // 3)
        mid_x, mid_y = (x0 + x1 + 1) // 2, (y0 + y1 + 1) // 2
        draw.rectangle((mid_x - bar // 2, y0, mid_x - bar // 2 + bar - 1, y1), fill=fill)
        draw.rectangle((x0, mid_y - bar // 2, x1, mid_y - bar // 2 + bar - 1), fill=fill)


def render(scene: list[ToyObject]) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        _draw_shape(draw, obj)
    return image


def _third(index: int) -> int:
    return index * 3 // GRID


def _unique_by(scene: list[ToyObject], key) -> list[ToyObject]:
    values = [key(o) for o in scene]
    return [o for o in scene if values.count(key(o)) == 1]


def _colour_question(rng, scene):
    candidates = _unique_by(scene, lambda o: o.shape)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    return Question(f"What colour is the {obj.shape}?", obj.colour, "colour")


def _shape_question(rng, scene):
    candidates = _unique_by(scene, lambda o: o.colour)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    return Question(f"What shape is the {obj.colour} object?", obj.shape, "shape")


def _count_question(rng, scene):
    if rng.random() < 0.5:
        colour = rng.choice(list(COLOURS))
        count = sum(o.colour == colour for o in scene)
        return Question(f"How many {colour} objects are there?", str(count), "count")
    shape = rng.choice(SHAPES)
    count = sum(o.shape == shape for o in scene)
    return Question(f"How many {shape}s are there?", str(count), "count")


def _total_question(rng, scene):
    return Question("How many objects are there?", str(len(scene)), "total")


def _exist_question(rng, scene):
    present = {(o.colour, o.shape) for o in scene}
    if rng.random() < 0.5:
        colour, shape = rng.choice(sorted(present))
        answer = "yes"
    else:
        colour, shape = rng.choice(sorted({(c, s) for c in COLOURS for s in SHAPES} - present))
        answer = "no"
    return Question(f"Is there a {colour} {shape}?", answer, "exist")


def _position_question(rng, scene):
    obj = rng.choice(scene)
    if rng.random() < 0.5:
        return Question(
            f"Is the {obj.name} on the left, in the middle or on the right?",
            COLUMN_THIRDS[_third(obj.column)],
            "position",
        )
    return Question(
        f"Is the {obj.name} at the top, in the middle or at the bottom?", ROW_THIRDS[_third(obj.row)], "position"
    )


def _relative_question(rng, scene):
    first, second = rng.sample(scene, 2)
    if rng.random() < 0.5:
        if first.column == second.column:
            return None
        answer = "yes" if first.column < second.column else "no"
        return Question(f"Is the {first.name} left of the {second.name}?", answer, "relative")
    if first.row == second.row:
        return None
    answer = "yes" if first.row < second.row else "no"
    return Question(f"Is the {first.name} above the {second.name}?", answer, "relative")


def _size_question(rng, scene):
    obj = rng.choice(scene)
    return Question(f"Is the {obj.name} big or small?", obj.size, "size")


QUESTION_MAKERS = {
    "colour": _colour_question,
    "shape": _shape_question,
    "count": _count_question,
    "total": _total_question,
    "exist": _exist_question,
    "position": _position_question,
    "relative": _relative_question,
    "size": _size_question,
}


def sample(rng: random.Random, question_type: str) -> tuple[list[ToyObject], Question]:
    """A scene and a question of the given type about it (new scenes until the type applies)."""
    while True:
        scene = random_scene(rng)
        question = QUESTION_MAKERS[question_type](rng, scene)
        if question is not None:
            return scene, question


def samples(seed: int, count: int) -> list[tuple[list[ToyObject], Question]]:
    """`count` samples whose question types cycle through QUESTION_TYPES (balanced types)."""
    rng = random.Random(seed)
    return [sample(rng, QUESTION_TYPES[i % len(QUESTION_TYPES)]) for i in range(count)]


def vocabulary() -> list[str]:
    """Every word the task's questions and answers use (lower case), sorted."""
    words = {"assistant", "user", ":", "?", ",", "color", *COLOURS, *SHAPES, *SIZES, *COLUMN_THIRDS, *ROW_THIRDS}
    words |= {f"{s}s" for s in SHAPES} | {str(n) for n in range(MAX_OBJECTS + 1)} | {"yes", "no"}
    templates = [
        "what colour is the ? what shape is the object ? how many objects are there ?",
        "is there a ? is the on the left , in the middle or on the right ? at the top at the bottom",
        "left of the above the big or small",
    ]
    for template in templates:
        words |= set(template.split())
    return sorted(words)


def question_patterns() -> list[str]:
    """The task's question templates as regular expressions (the toy's tokenizer lower-cases, so
    they match case-insensitively). The toy answers these; any other question (another wording,
    US "color") gets a confident answer to the nearest template, usually "no"."""
    colour, shape = f"(?:{'|'.join(COLOURS)})", f"(?:{'|'.join(SHAPES)})"
    name = f"{colour} {shape}"
    return [
        rf"what colour is the {shape}\?",
        rf"what shape is the {colour} object\?",
        rf"how many {colour} objects are there\?",
        rf"how many {shape}s are there\?",
        r"how many objects are there\?",
        rf"is there a {name}\?",
        rf"is the {name} on the left, in the middle or on the right\?",
        rf"is the {name} at the top, in the middle or at the bottom\?",
        rf"is the {name} left of the {name}\?",
        rf"is the {name} above the {name}\?",
        rf"is the {name} big or small\?",
    ]


def question_templates() -> dict:
    """What the shipped toy's `question_templates.json` holds (see models/question_templates.py)."""
    return {
        "about": "the questions this model was trained on; it answers others confidently and wrongly",
        "examples": [
            "What colour is the circle?",
            "What shape is the red object?",
            "How many blue objects are there?",
            "How many squares are there?",
            "How many objects are there?",
            "Is there a green cross?",
            "Is the red circle on the left, in the middle or on the right?",
            "Is the red circle at the top, in the middle or at the bottom?",
            "Is the red circle left of the blue square?",
            "Is the red circle above the blue square?",
            "Is the red circle big or small?",
        ],
        "patterns": question_patterns(),
    }


def write_dataset(out: Path, count: int, seed: int, force: bool = False) -> Path:
    """Write `count` held-out samples as PNGs and data.jsonl into `out` (atomically); `force`
    replaces an existing folder."""
    if count < 1:
        raise UserError("--count must be at least 1")
    with folder_atomically(out, force, "the data set", lambda folder: (folder / "data.jsonl").is_file()) as staging:
        (staging / "images").mkdir()
        rows = []
        for index, (scene, question) in enumerate(samples(seed, count)):
            name = f"images/{index:05d}.png"
            render(scene).save(staging / name)
            rows.append({"image": name, "question": question.text, "answer": question.answer, "type": question.type})
        (staging / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@click.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New folder for images/ and data.jsonl.")
@click.option("--count", type=int, default=400, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=1234, show_default=True)
def main(out: Path, count: int, seed: int) -> None:
    """Write a held-out set of the toy task."""
    try:
        write_dataset(out, count, seed)
    except UserError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {count} samples to {out / 'data.jsonl'}")


if __name__ == "__main__":
    main()
