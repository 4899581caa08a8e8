import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Built-in models are written to a fresh cache, never the user's."""
    cache = tmp_path_factory.mktemp("vtpexport-cache")
    old = os.environ.get("VTPEXPORT_CACHE")
    os.environ["VTPEXPORT_CACHE"] = str(cache)
    os.environ.pop("VTPEXPORT_WEIGHTS_DIR", None)
    yield cache
    if old is None:
        os.environ.pop("VTPEXPORT_CACHE", None)
    else:
        os.environ["VTPEXPORT_CACHE"] = old


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "photo.png"
    random_image(60, 90).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_models():
    """Each built-in family loaded once, as the user would load it."""
    from vtpexport.models.loader import load_model

    return {name: load_model(name) for name in ("tiny-llava-1.5", "tiny-llava-next")}
