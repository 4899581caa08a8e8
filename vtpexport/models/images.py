"""Image decoding with messages a user can act on, and size limits checked before decoding."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import UserError

# Far above any model's input (LLaVA-NeXT's largest tiling is 672 x 1344), far below what
# takes gigabytes to decode: a 20000 x 20000 PNG is 1.2 GB of RGB, a 1 x 40000 one tiles into
# thousands of crops.
MAX_PIXELS = 50_000_000
MAX_SIDE = 8192
MAX_ASPECT = 20


def check_image_size(width: int, height: int, path: Path) -> None:
    """Refuse sizes over the limits (read from the file's header, before any pixel is decoded)."""
    if min(width, height) < 1:
        raise UserError(f"image {path} is {width} x {height} pixels: it holds no pixels")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise UserError(
            f"image {path} is {width} x {height} pixels, over the limit of {MAX_SIDE} px a side and "
            f"{MAX_PIXELS // 1_000_000} MP: scale it down first"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise UserError(f"image {path} is {width} x {height} pixels, more elongated than {MAX_ASPECT}:1: crop it first")


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            # PIL warns (and past twice its own limit refuses) at open for huge images; ours are lower.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # lazy: only the header is read
                check_image_size(image.width, image.height, path)
                image.load()  # decode now, so truncated files fail here and not mid-run
                return image.convert("RGB")
    except UnidentifiedImageError:
        raise UserError(f"{path} is not an image PIL can read (expected JPEG, PNG, WebP, ...)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise UserError(f"image {path} is too large to decode safely: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"image {path} is corrupt or truncated: {error}") from None
