"""Rebuild the default calibration set: photos, calibration.jsonl and ATTRIBUTION.md.

    python calibration_data/make_calibration_data.py

The photos are public-domain / CC0 sample images shipped inside the scikit-image wheel
(and two shipped inside SciPy 1.11's wheel, as pickles). The wheels are fetched with
`pip download` into a temporary folder and read as zip files: neither package is installed
or imported, and vtpexport does not depend on them. Every photo is re-encoded as JPEG
(quality 90), scaled down to at most 672 px on its longer side. The committed files are the
output of this script; run it again only to change the set.
"""

from __future__ import annotations

import bz2
import io
import json
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SKIMAGE = "scikit-image==0.26.0"
SCIPY = "scipy==1.11.1"  # the last release that still ships misc/face.dat and misc/ascent.dat
MAX_SIDE = 672


@dataclass(frozen=True)
class Photo:
    name: str
    package: str  # SKIMAGE or SCIPY
    member: str  # path inside the wheel
    credit: str  # as the package's docstring states it
    licence: str  # "public domain" or "CC0"
    questions: tuple[str, ...]


PHOTOS = (
    Photo(
        "astronaut",
        SKIMAGE,
        "skimage/data/astronaut.png",
        "Eileen Collins, NASA Great Images database",
        "public domain",
        ("What is the woman wearing?", "What objects are in the background?", "What is she holding?"),
    ),
    Photo(
        "brick",
        SKIMAGE,
        "skimage/data/brick.png",
        "CC0Textures (Bricks25), perspective-corrected and cropped by scikit-image",
        "CC0",
        ("What material is shown?", "How are the bricks arranged?"),
    ),
    Photo(
        "camera",
        SKIMAGE,
        "skimage/data/camera.png",
        "Lav Varshney",
        "CC0",
        ("What is the man doing?", "What is he wearing?", "What can be seen in the distance?"),
    ),
    Photo(
        "cell",
        SKIMAGE,
        "skimage/data/cell.png",
        "Paul Mueller et al., quantitative phase image of a cell",
        "CC0",
        ("What kind of image is this?", "Where is the bright object located?"),
    ),
    Photo(
        "chelsea",
        SKIMAGE,
        "skimage/data/chelsea.png",
        "Stefan van der Walt (Chelsea the cat)",
        "CC0",
        ("What animal is this?", "What colour are its eyes?", "Describe the fur pattern."),
    ),
    Photo(
        "clock",
        SKIMAGE,
        "skimage/data/clock_motion.png",
        "Stefan van der Walt (motion-blurred wall clock)",
        "public domain",
        ("Why is the picture blurry?", "What object is shown?"),
    ),
    Photo(
        "coffee",
        SKIMAGE,
        "skimage/data/coffee.png",
        "Rachel Michetti, courtesy of Pikolo Espresso Bar",
        "CC0",
        ("What drink is in the cup?", "What colour is the saucer?", "What is the table made of?", "Is there a spoon?"),
    ),
    Photo(
        "grass",
        SKIMAGE,
        "skimage/data/grass.png",
        "linolafett on DeviantArt (Grass 01), cropped and converted to grey by scikit-image",
        "CC0",
        ("What is shown in this picture?", "Is the image in colour?"),
    ),
    Photo(
        "gravel",
        SKIMAGE,
        "skimage/data/gravel.png",
        "CC0Textures (Gravel04), rescaled and cropped by scikit-image",
        "CC0",
        ("What surface is this?", "Are the stones large or small?"),
    ),
    Photo(
        "hubble_deep_field",
        SKIMAGE,
        "skimage/data/hubble_deep_field.jpg",
        "NASA, Hubble eXtreme Deep Field (HubbleSite)",
        "public domain",
        ("What does this image show?", "What colour is the background?", "Are there any galaxies?"),
    ),
    Photo(
        "microaneurysms",
        SKIMAGE,
        "skimage/data/microaneurysms.png",
        "Andreas Maier, High-Resolution Fundus Image Database (crop)",
        "CC0",
        ("What kind of image is this?", "Describe the dark lines."),
    ),
    Photo(
        "retina",
        SKIMAGE,
        "skimage/data/retina.jpg",
        "Mikael Haggstrom, fundus photograph of a normal left eye (Wikimedia Commons)",
        "CC0",
        ("What part of the body is shown?", "What colour dominates the image?", "Where is the bright spot?"),
    ),
    Photo(
        "rocket",
        SKIMAGE,
        "skimage/data/rocket.jpg",
        "SpaceX, launch of DSCOVR on Falcon 9",
        "public domain",
        ("What is standing on the launch pad?", "Is it day or night?", "How many towers surround the rocket?"),
    ),
    Photo(
        "text",
        SKIMAGE,
        "skimage/data/text.png",
        "Wikipedia (File:Corner.png), handwritten formulas",
        "public domain",
        ("What is written on the paper?", "Is this handwriting or print?"),
    ),
    Photo(
        "raccoon",
        SCIPY,
        "scipy/misc/face.dat",
        "public-domain-image.com (raccoon-procyon-lotor.jpg), as SciPy's misc.face states",
        "public domain",
        ("What animal is in the picture?", "What is the animal hiding in?", "What colour are the leaves?"),
    ),
    Photo(
        "stairs",
        SCIPY,
        "scipy/misc/ascent.dat",
        "public-domain-image.com (accent-to-the-top.jpg), as SciPy's misc.ascent states",
        "public domain",
        ("What are the people doing?", "What is the structure made of?"),
    ),
)


def download(spec: str, folder: Path) -> zipfile.ZipFile:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(folder), spec],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    name = spec.split("==")[0].replace("-", "_")
    return zipfile.ZipFile(next(folder.glob(f"{name}-*.whl")))


def decode(photo: Photo, wheel: zipfile.ZipFile) -> Image.Image:
    data = wheel.read(photo.member)
    if photo.member.endswith("face.dat"):  # bz2 of raw 768 x 1024 x 3 bytes
        return Image.fromarray(np.frombuffer(bz2.decompress(data), dtype=np.uint8).reshape(768, 1024, 3))
    if photo.member.endswith("ascent.dat"):  # a pickled 512 x 512 list of grey levels
        return Image.fromarray(np.array(pickle.loads(data), dtype=np.uint8))
    return Image.open(io.BytesIO(data))


def attribution() -> str:
    lines = [
        "# Default calibration set: sources and licences",
        "",
        "Every photo here is in the public domain or dedicated to it under CC0, as stated in the",
        "documentation of the package it was taken from. Each was re-encoded as JPEG (quality 90)",
        f"and scaled to at most {MAX_SIDE} px on its longer side by `make_calibration_data.py`.",
        "The questions in `calibration.jsonl` were written for vtpexport.",
        "",
        "Sample images that scikit-image ships without an explicit public-domain or CC0 statement",
        "(coins, moon, page, immunohistochemistry, the Middlebury motorcycle pair) are not used.",
        "",
        "| file | source package | original file | credit | licence |",
        "|---|---|---|---|---|",
    ]
    for photo in PHOTOS:
        package = photo.package.replace("==", " ")
        lines.append(f"| images/{photo.name}.jpg | {package} | {photo.member} | {photo.credit} | {photo.licence} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    images = HERE / "images"
    images.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as temporary:
        wheels = {spec: download(spec, Path(temporary)) for spec in (SKIMAGE, SCIPY)}
        rows = []
        for photo in PHOTOS:
            image = decode(photo, wheels[photo.package]).convert("RGB")
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            image.save(images / f"{photo.name}.jpg", quality=90)
            rows += [{"image": f"images/{photo.name}.jpg", "question": q} for q in photo.questions]
    (HERE / "calibration.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (HERE / "ATTRIBUTION.md").write_text(attribution())
    print(f"{len(PHOTOS)} photos, {len(rows)} questions -> {HERE}")


if __name__ == "__main__":
    main()
