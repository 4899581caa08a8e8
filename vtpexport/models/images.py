"""Image decoding with messages a user can act on."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import UserError


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here and not mid-run
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise UserError(f"{path} is not an image PIL can read (expected JPEG, PNG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"image {path} is corrupt or truncated: {error}") from None
