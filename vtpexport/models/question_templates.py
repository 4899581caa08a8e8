"""A model folder may declare the questions it was trained on (`question_templates.json`: regular
expressions and examples); `run` warns when a question is none of them. The shipped toy declares
its task's templates: outside them it answers confidently and wrongly, which looks like a bug."""

from __future__ import annotations

import json
import re
from pathlib import Path

TEMPLATES_FILE = "question_templates.json"


def outside_templates(folder: Path | None, question: str) -> str | None:
    """The warning for `question`, or None when the folder declares no templates or one matches."""
    path = folder / TEMPLATES_FILE if folder is not None else None
    if path is None or not path.is_file():
        return None
    templates = json.loads(path.read_text())
    if any(re.fullmatch(p, question.strip(), re.IGNORECASE) for p in templates["patterns"]):
        return None
    examples = "; ".join(templates["examples"][:3])
    return f"warning: this model knows only the questions in {path} ({templates['about']}); for example: {examples}"
