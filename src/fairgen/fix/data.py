"""The balanced set of `fairgen fix`: for every training prompt and every group of each chosen attribute,
images of that group, checked by perception and rebalanced.

Per neutral prompt x and attribute a (the paper's "mix" for several attributes: each attribute on its
own, never their cross product), each group g of a gets `images_per_group` images of the explicit prompt
`suites.explicit(x, {a: g})` from a source. With several attributes, copy k of (x, a, g) also names a
group of each other chosen attribute b, b's groups in turn (ATTRIBUTES[b][(k + index of g) % |b|]):
otherwise "an Asian nurse" is drawn with the source's own gender skew, and the race units, two thirds
of a gender-and-race set's images, teach that skew back (docs/fix.md, the mix setting). Folder sources
keep the one-attribute prompts (their files are named by them). The sources:
    model          the model being fixed
    world          the world renderer: the prompt's concept, the group as asked, the rest sampled
    diffusers:<id> a text-to-image pipeline;   folder:<dir>  images on disk (<dir>/images/<explicit id>/)
Every image is perceived; one is dropped when no face is found, a group its prompt names is not read
back, or (with check_concept, for backends that read a concept cue) the cue is not x's concept. Then
each (x, a) is rebalanced: every group keeps as many images as its scarcest group has left, so no group
is over-represented; an (x, a) with a group left empty is dropped whole.

On disk (<dir> = the fix run's data/ folder; a run directory of store.py, so an interrupted build resumes
and never redoes an image):
    images/<explicit prompt id>/<sample:05d>.png, perception.jsonl, manifest.json
    balanced.parquet   the kept rows: prompt, neutral_prompt, prompt_id, attribute, group, sample, image
                       (image: path relative to <dir>, or absolute for folder sources)
    stats.json         generated / dropped counts per attribute and group, prompts dropped
`datasets.load_dataset("parquet", data_files=str(<dir>/"balanced.parquet"))` loads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .. import suites
from ..config import AuditConfig
from ..models.protocols import ImageSource, Model as UnifiedModel
from ..perception.base import PerceptionBackend
from ..hostwork import Loaded, Recorder
from ..store import RunStore, derive_seed
from ..types import ATTRIBUTES, FairgenError, Prompt

PARQUET, STATS = "balanced.parquet", "stats.json"
COLUMNS = ("prompt", "neutral_prompt", "prompt_id", "attribute", "group", "sample", "image")
# Why an image was dropped, in the order the checks run.
REASONS = ("no_face", "wrong_group", "wrong_concept")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Request:
    """The images of one group of the set: neutral prompt `neutral`, attribute `attribute`, class `group`;
    `explicit` names the group alone; `others` are the other chosen attributes that copy k's prompt
    also names (explicit_at)."""

    neutral: Prompt
    attribute: str
    group: str
    explicit: Prompt
    others: tuple[str, ...] = ()

    def explicit_at(self, k: int) -> Prompt:
        """The explicit prompt of copy k: `explicit`, plus one group of each of `others`, in turn."""
        if not self.others:
            return self.explicit
        shift = k + ATTRIBUTES[self.attribute].index(self.group)
        named = {b: ATTRIBUTES[b][shift % len(ATTRIBUTES[b])] for b in self.others}
        return suites.explicit(self.neutral, {self.attribute: self.group, **named})


def requests(prompts: Sequence[Prompt], attributes: Sequence[str], cross: bool = True) -> list[Request]:
    """Every (prompt, attribute, group) in prompt-major order, with its explicit prompt; cross: copies
    also name the other chosen attributes' groups (module docstring)."""
    for attr in attributes:
        if attr not in ATTRIBUTES:
            raise FairgenError(f"unknown attribute {attr!r} (known: {', '.join(ATTRIBUTES)})")
    return [Request(p, a, g, suites.explicit(p, {a: g}), tuple(b for b in attributes if b != a and cross))
            for p in prompts for a in attributes for g in ATTRIBUTES[a]]


def spread(prompts: Sequence[Prompt], limit: int | None) -> list[Prompt]:
    """At most `limit` prompts, evenly spread over the suite (so every part of it is represented)."""
    if limit is None or limit >= len(prompts):
        return list(prompts)
    if limit < 1:
        raise FairgenError(f"--train-prompts must be >= 1 (got {limit})")
    return [prompts[int(i)] for i in np.linspace(0, len(prompts) - 1, limit).round()]


def mismatch(seen: dict[str, Any], explicit: Prompt, check_concept: bool = False) -> str | None:
    """Why a perceived image of the explicit prompt does not show what was asked (one of REASONS), or None
    when it does: every group the prompt names must be read back. check_concept: also require the concept
    cue, where the backend reads one, to be the prompt's."""
    if not seen["face"]:
        return "no_face"
    if any(seen["label"].get(attr) != cls for attr, cls in explicit.group.items()):
        return "wrong_group"
    read = seen.get("concept_read")
    if check_concept and read is not None:
        from ..world import concept_matches

        if not concept_matches(read, explicit.concept):
            return "wrong_concept"
    return None


def _generate(store: RunStore, source: UnifiedModel, plan: list[tuple[Request, int, int]],
              sampling: dict[str, Any]) -> list[Loaded]:
    """(image, error, source file, new) for each planned item: from a folder source's files, from the store
    when made before, else generated in one call (new: the Recorder saves those)."""
    if isinstance(source, ImageSource):
        return [(*source.read(r.explicit, k), str(source.source(r.explicit, k)), False) for r, k, _ in plan]
    out: list[Loaded] = []
    missing = []
    for i, (r, k, _) in enumerate(plan):
        out.append((store.load_image(r.explicit_at(k).id, k), None, None, False))
        if out[-1][0] is None:
            missing.append(i)
    if missing:
        made = source.generate([plan[i][0].explicit_at(plan[i][1]) for i in missing],
                               [plan[i][2] for i in missing], **sampling)
        for i, image in zip(missing, made):
            out[i] = (image, None, None, True)
    return out


def build(prompts: Sequence[Prompt], attributes: Sequence[str], source: UnifiedModel, backend: PerceptionBackend,
          out: str | Path, images_per_group: int = 4, seed: int = 0, sampling: dict[str, Any] | None = None,
          batch_size: int = AuditConfig.batch_size, check_concept: bool = False, progress: Progress | None = None) -> "BalancedSet":
    """Make (or finish, or reuse) the balanced set in `out`; see the module docstring. Returns it loaded."""
    if images_per_group < 1:
        raise FairgenError(f"--images-per-group must be >= 1 (got {images_per_group})")
    missing = [a for a in attributes if a not in backend.attributes]
    if missing:
        raise FairgenError(f"perception {backend.name} does not measure {', '.join(missing)}: "
                           "it cannot check the balanced set")
    cross = len(attributes) > 1 and not isinstance(source, ImageSource)
    reqs = requests(prompts, attributes, cross)
    sampling = dict(sampling or {})
    config = {"stage": "fix-data", "source": source.spec, "prompt_ids": [p.id for p in prompts],
              "attributes": list(attributes), "images_per_group": images_per_group, "seed": seed,
              "perception": backend.name, "sampling": sampling}
    if cross:  # a set made before copies named the other attributes is refused, not mixed in
        config["copies_name_other_attributes"] = True
    store = RunStore.open(out, config, {"source_provenance": source.provenance(),
                                        "perception_provenance": backend.provenance()})
    if isinstance(source, ImageSource):  # images on disk: match the folder to the explicit prompts
        source.bind([r.explicit for r in reqs])
    records = store.load_records()
    plan = [(r, k, derive_seed(seed, r.explicit_at(k).id, k))
            for r in reqs for k in range(_count(source, r, images_per_group))]
    todo = [item for item in plan if (item[0].explicit_at(item[1]).id, item[1]) not in records]
    done = len(plan) - len(todo)

    def on_recorded(new: list[dict[str, Any]]) -> None:
        nonlocal done
        records.update({(rec["prompt_id"], rec["sample"]): rec for rec in new})
        done += len(new)
        if progress:
            progress(done, len(plan))

    # Generated in this thread, saved and perceived one batch behind in the host workers (hostwork.py).
    with Recorder(store, backend, on_recorded, images=len(todo)) as recorder:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            recorder.put([(r.explicit_at(k).id, k, s) for r, k, s in batch],
                         _generate(store, source, batch, sampling))
    rows, stats = rebalance(reqs, plan, records, check_concept)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    tmp = store.root / f".{PARQUET}.tmp"
    frame.to_parquet(tmp, index=False)
    tmp.replace(store.root / PARQUET)
    store.write_json(STATS, stats)
    store.finish()
    return BalancedSet(store.root, frame, stats)


def _count(source: UnifiedModel, request: Request, wanted: int) -> int:
    """Images planned for a request: `wanted`, or fewer when a folder source holds fewer."""
    available = getattr(source, "available", None)
    return min(wanted, available(request.explicit)) if available else wanted


def rebalance(reqs: Sequence[Request], plan: Sequence[tuple[Request, int, int]],
              records: dict[tuple[str, int], dict[str, Any]], check_concept: bool = False
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Drop mismatches, then keep per (prompt, attribute) the same number of images for every group.

    Returns (rows of balanced.parquet, stats). stats: per attribute and group, images generated, dropped
    per reason and kept; per attribute, prompts kept and dropped (a group without any image left)."""
    kept: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    stats: dict[str, Any] = {a: {"groups": {g: {"generated": 0, **{r: 0 for r in REASONS}, "kept": 0}
                                            for g in ATTRIBUTES[a]}, "prompts_kept": 0, "prompts_dropped": []}
                             for a in dict.fromkeys(r.attribute for r in reqs)}
    for r, k, _ in plan:
        explicit = r.explicit_at(k)
        rec = records[(explicit.id, k)]
        entry = stats[r.attribute]["groups"][r.group]
        entry["generated"] += 1
        why = mismatch(rec, explicit, check_concept)
        if why:
            entry[why] += 1
            continue
        image = rec.get("source") or f"images/{explicit.id}/{k:05d}.png"
        kept.setdefault((r.neutral.id, r.attribute, r.group), []).append(
            {"prompt": explicit.text, "neutral_prompt": r.neutral.text, "prompt_id": r.neutral.id,
             "attribute": r.attribute, "group": r.group, "sample": k, "image": image})
    rows: list[dict[str, Any]] = []
    for neutral in {r.neutral.id: r.neutral for r in reqs}.values():  # Prompt is not hashable (group: dict)
        for attr in stats:
            per_group = [kept.get((neutral.id, attr, g), []) for g in ATTRIBUTES[attr]]
            m = min(len(rs) for rs in per_group)
            if m == 0:
                stats[attr]["prompts_dropped"].append(neutral.id)
                continue
            stats[attr]["prompts_kept"] += 1
            for g, rs in zip(ATTRIBUTES[attr], per_group):
                stats[attr]["groups"][g]["kept"] += m
                rows += rs[:m]
    for attr in stats.values():
        for entry in attr["groups"].values():
            n = entry["generated"]
            entry["drop_rate"] = sum(entry[r] for r in REASONS) / n if n else None
    return rows, stats


@dataclass
class BalancedSet:
    """The balanced set as loaded: `frame` holds balanced.parquet's rows (COLUMNS), `root` its folder."""

    root: Path
    frame: pd.DataFrame
    stats: dict[str, Any]

    @classmethod
    def load(cls, root: str | Path) -> "BalancedSet":
        root = Path(root)
        if not (root / PARQUET).is_file():
            raise FairgenError(f"{root} holds no {PARQUET} (not a finished balanced set)")
        return cls(root, pd.read_parquet(root / PARQUET), json.loads((root / STATS).read_text()))

    def image(self, row: int) -> Image.Image:
        """The image of row `row` (RGB)."""
        with Image.open(self.root / self.frame["image"].iat[row]) as im:
            return im.convert("RGB")
