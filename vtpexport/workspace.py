"""The working folder's current recipe: the one `calibrate` wrote last, which `build`, `inspect`,
`viz` and `eval` use when no recipe is named (as git's HEAD names the current branch).

The pointer is a one-line file, `.vtpexport/current-recipe` in the folder the commands run in
(`VTPEXPORT_STATE_DIR` moves it), holding the recipe's absolute path. It does not import torch:
commands resolve it before anything heavy loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError
from .files import write_atomically

STATE_DIR_VARIABLE = "VTPEXPORT_STATE_DIR"


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_VARIABLE) or ".vtpexport")


def pointer() -> Path:
    return state_dir() / "current-recipe"


def remember_recipe(recipe: str | Path) -> Path:
    """Make `recipe` the current one; returns the pointer file."""
    target = pointer()
    target.parent.mkdir(parents=True, exist_ok=True)
    line = f"{Path(recipe).resolve()}\n".encode()
    return write_atomically(target, lambda f: f.write(line), "the current-recipe pointer")


def current_recipe() -> Path | None:
    """The current recipe, or None when `calibrate` has not run here. A pointer to a recipe that
    has since gone is refused, not skipped: silently building unpruned would be the wrong export."""
    target = pointer()
    if not target.is_file():
        return None
    recipe = Path(target.read_text().strip())
    if not recipe.is_file():
        raise UserError(f"the current recipe {recipe} (named in {target}) is gone: pass --recipe FILE")
    return recipe


def recipe_or_current(recipe: str | None, command: str) -> tuple[str | None, str | None]:
    """The recipe a command uses: the named one, else the current one, with the line that says so
    (None when a recipe was named or there is none)."""
    if recipe is not None:
        return recipe, None
    current = current_recipe()
    if current is None:
        return None, None
    return str(current), f"{command}: using the current recipe {current} (from calibrate; --recipe picks another)"
