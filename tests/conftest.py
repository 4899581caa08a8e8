import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

# The suite runs on pytest-xdist workers, one per core: one torch thread each keeps the cores
# from being oversubscribed (a lone run may use two).
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
torch.set_num_threads(1 if WORKER else 2)


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder every xdist worker of this run sees (a worker's base temp is one level below
    the run's); the worker's own base temp when running alone."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if WORKER else base) / name
    folder.mkdir(exist_ok=True)
    return folder


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


def write_labelled_data(folder: Path, count: int, sizes=((48, 48), (60, 90))) -> Path:
    """A small labelled VQA set: solid-colour images with colour and count questions, as JSONL
    rows {"image", "question", "answer", "type"} beside the PNGs."""
    colours = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220)}
    names = sorted(colours)
    rows = []
    for i in range(count):
        colour = names[i % len(names)]
        height, width = sizes[i % len(sizes)]
        image = Image.new("RGB", (width, height), colours[colour])
        image.save(folder / f"img{i}.png")
        if i % 2:
            rows.append({"image": f"img{i}.png", "question": "How many shapes?", "answer": "0", "type": "count"})
        else:
            rows.append({"image": f"img{i}.png", "question": "What colour?", "answer": colour, "type": "colour"})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """Export folders of the tiny models, built lazily and once per test run (shared by the
    xdist workers: the first to ask builds, under a lock, the others wait and reuse):
    get(model, name="unpruned", selector=None, schedule=None, trt_target=10). Tests never modify them."""
    from vtpexport.export.build import build_onnx
    from vtpexport.models.loader import architecture
    from vtpexport.recipe import ModelRef, Recipe

    root = shared_dir(tmp_path_factory, "shared-exports")

    def get(model_name: str, name: str = "unpruned", selector=None, schedule=None, trt_target: int = 10) -> Path:
        args = architecture(model_name)
        recipe = None
        if name != "unpruned":
            recipe = Recipe(name, ModelRef(args.family, model_name, args.config_hash()), selector, schedule)
        key = hashlib.sha256(repr((model_name, name, selector, schedule, trt_target)).encode()).hexdigest()[:16]
        out = root / f"{model_name}-{name}-{key}"
        with FileLock(f"{out}.lock"):
            if not (out / "manifest.json").is_file():
                recipe_path = None
                if recipe is not None:
                    recipe_path = root / f"{out.name}.yaml"
                    recipe.save(recipe_path)
                build_onnx(model_name, str(recipe_path) if recipe_path else None, str(out), trt_target=trt_target)
        return out

    return get


@pytest.fixture(autouse=True)
def isolated_current_recipe(tmp_path_factory, monkeypatch):
    """Each test has its own current-recipe pointer, never the checkout's (outside tmp_path,
    which tests list)."""
    monkeypatch.setenv("VTPEXPORT_STATE_DIR", str(tmp_path_factory.mktemp("vtpexport-state")))
