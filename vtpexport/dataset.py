"""Datasets of (image, question) records: a JSONL or a folder of images with a question list.

Used by calibration, verification and evaluation; images are decoded up front so a bad file
fails before any model is loaded. A JSONL row may also carry a labelled "answer" and a
question "type" (evaluation reports accuracy per type).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .errors import UserError
from .files import sha256
from .models.images import load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_QUESTIONS = ("Describe the image in detail.", "What is the main object in the picture?")


@dataclass(frozen=True)
class Record:
    image: Path
    question: str
    answer: str | None = None  # the labelled answer, when the data has one
    type: str | None = None  # the question type, when the data names one


def read_dataset(path: str | Path) -> list[Record]:
    """A JSONL of {"image": path relative to the file, "question": text, optional "answer" and
    "type": text}, or a folder of images whose questions (one per line) are in its
    questions.txt; every image gets every question."""
    path = Path(path)
    if path.is_dir():
        records = _read_folder(path)
    elif path.is_file():
        records = _read_jsonl(path)
    else:
        raise UserError(f"data not found: {path}")
    if not records:
        raise UserError(f"{path} holds no samples")
    return records


def _read_jsonl(path: Path) -> list[Record]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read data {path}: {error}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number}: not valid JSON") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object with 'image' and 'question'")
        for key in ("image", "question"):
            if key not in row:
                raise UserError(f"{path}:{number}: expected a JSON object with 'image' and 'question' (no '{key}')")
        image, question = row["image"], row["question"]
        if not isinstance(image, str) or not isinstance(question, str) or not question.strip():
            raise UserError(f"{path}:{number}: 'image' must be a path and 'question' a non-empty text")
        for key in ("answer", "type"):
            if key in row and not isinstance(row[key], str):
                raise UserError(f"{path}:{number}: '{key}' must be a text, got {json.dumps(row[key])}")
        records.append(Record(path.parent / image, question, row.get("answer"), row.get("type")))
    return records


def _read_folder(folder: Path) -> list[Record]:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    questions_file = folder / "questions.txt"
    questions = DEFAULT_QUESTIONS
    if questions_file.is_file():
        questions = tuple(line.strip() for line in questions_file.read_text().splitlines() if line.strip())
        if not questions:
            raise UserError(f"{questions_file} holds no questions")
    return [Record(image, question) for image in images for question in questions]


def select_records(records: list[Record], count: int, seed: int) -> list[Record]:
    """`count` records drawn with `seed` (all of them if there are not more), in file order."""
    if count >= len(records):
        return list(records)
    return [records[i] for i in sorted(random.Random(seed).sample(range(len(records)), count))]


@dataclass
class Samples:
    images: list[Image.Image]
    questions: list[str]
    records: list[Record]  # the records used, in order (labels and types travel with them)
    skipped: list[str]  # files that could not be read (with --skip-bad)
    sha256: str  # of the image bytes and questions used, in order


def load_samples(records: list[Record], skip_bad: bool = False) -> Samples:
    """Decode every image now (a bad file fails before any model is loaded)."""
    images, questions, used, skipped, decoded = [], [], [], [], {}
    digest = hashlib.sha256()
    for record in records:
        if record.image not in decoded:
            try:
                decoded[record.image] = (load_image(record.image), sha256(record.image))
            except UserError:
                if not skip_bad:
                    raise
                decoded[record.image] = None
        if decoded[record.image] is None:
            skipped.append(str(record.image))
            continue
        image, image_sha = decoded[record.image]
        images.append(image)
        questions.append(record.question)
        used.append(record)
        digest.update(f"{image_sha}\n{record.question}\n".encode())
    if not images:
        raise UserError(f"no usable samples: all {len(records)} were skipped as unreadable")
    return Samples(images, questions, used, skipped, digest.hexdigest())
