"""MetricFrame: an audit's perception records, disaggregated by prompt, as one small data object.

In the spirit of fairlearn's MetricFrame: counts per (prompt, attribute, class) are the only state; every
metric, interval and table is derived from them. `summarize` turns a frame into results.json's dict
(docs/architecture.md, "results.json"); `results_frame` turns that dict into a pandas table, so runs read back from disk and runs just
computed give the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..types import ATTRIBUTES, JOINT, METRIC_ATTRIBUTES, Prompt
from .intervals import bootstrap_metrics, nanmean_rows, noise_floor, percentile_interval
from .population import population_rd, share_replicates
from .skew import SKEW_METRICS, frequencies
from .target import TARGET_METRICS, UNIFORM, Target


# Per-prompt values beside rd in results.json: the skew metrics and the distances to the target.
PER_PROMPT_METRICS = tuple(m for m in SKEW_METRICS if m != "rd") + tuple(TARGET_METRICS)


@dataclass
class MetricFrame:
    """Counts of one audit.

    prompts: the P prompts, in suite order.
    n_images, n_faces, n_unreadable: (P,) int arrays.
    counts: attribute -> (P, K) int array of argmax labels among images with a face; only measured
        attributes are present (gender_x_race when both gender and race are).
    concept_matches: (P,) int array of images whose concept cue reads back the prompt's concept, or
        None when the perception backend reads no concept cue.
    """

    prompts: list[Prompt]
    n_images: np.ndarray
    n_faces: np.ndarray
    n_unreadable: np.ndarray
    counts: dict[str, np.ndarray]
    concept_matches: np.ndarray | None = None

    @classmethod
    def from_records(
        cls,
        prompts: Sequence[Prompt],
        records: Iterable[Mapping[str, Any]],
        attributes: Sequence[str],
        concept_match: Any = None,
    ) -> "MetricFrame":
        """Count perception.jsonl records (dicts with prompt_id, face, label, concept_read, error).

        attributes: what the backend measures. concept_match(code, concept) -> bool, or None if the
        backend reads no concept cue.
        """
        index = {p.id: i for i, p in enumerate(prompts)}
        n_p = len(prompts)
        measured = [a for a in ATTRIBUTES if a in attributes]
        if "gender" in measured and "race" in measured:
            measured.append(JOINT)
        class_index = {a: {c: k for k, c in enumerate(METRIC_ATTRIBUTES[a])} for a in measured}
        n_images = np.zeros(n_p, dtype=np.int64)
        n_faces = np.zeros(n_p, dtype=np.int64)
        n_unreadable = np.zeros(n_p, dtype=np.int64)
        counts = {a: np.zeros((n_p, len(METRIC_ATTRIBUTES[a])), dtype=np.int64) for a in measured}
        matches = np.zeros(n_p, dtype=np.int64) if concept_match is not None else None
        for rec in records:
            i = index.get(rec["prompt_id"])
            if i is None:
                continue
            n_images[i] += 1
            if rec.get("error"):
                n_unreadable[i] += 1
            if matches is not None and rec.get("concept_read") is not None:
                matches[i] += bool(concept_match(rec["concept_read"], prompts[i].concept))
            if not rec.get("face"):
                continue
            n_faces[i] += 1
            label = dict(rec.get("label") or {})
            if "gender" in label and "race" in label:
                label[JOINT] = f"{label['gender']}_{label['race']}"
            for a in measured:
                if a in label:
                    counts[a][i, class_index[a][label[a]]] += 1
        return cls(list(prompts), n_images, n_faces, n_unreadable, counts, matches)

    def summarize(self, replicates: int = 1000, seed: int = 0, target: Target = UNIFORM) -> dict[str, Any]:
        """results.json's "summary" and "prompts" parts (docs/architecture.md), with bootstrap ci95 and noise
        floors.

        The bootstrap resamples images within each prompt; `seed` makes it reproducible. Distances to
        `target` (tv, js: metrics/target.py) sit beside the skew metrics, per prompt and for the suite.
        """
        summary: dict[str, Any] = {}
        per_prompt: dict[str, dict[str, Any]] = {}
        goals = {a: self._target_metrics(target, a) for a in self.counts}
        boots = self._bootstrap(replicates, seed, goals)
        for a_index, attr in enumerate(METRIC_ATTRIBUTES):
            if attr not in self.counts:
                summary[attr] = None  # not measured: reported as such, never as zero
                continue
            c = self.counts[attr]
            k = c.shape[1]
            floors = np.array([noise_floor(int(m), k) if m > 0 else np.nan for m in c.sum(axis=1)])
            summary[attr] = {"n_prompts": int((c.sum(axis=1) > 0).sum())}
            per_prompt[attr] = {"noise_floor": floors}
            for name, fn in {**SKEW_METRICS, **goals[attr]}.items():
                point = np.asarray(fn(c), dtype=float)
                per_boot, suite_boot = boots[attr, name]
                mean = nanmean_rows(point)
                entry = {"mean": _num(mean), "ci95": _pair(holding(percentile_interval(suite_boot), mean))}
                if name == "rd":
                    entry["noise_floor"] = _num(nanmean_rows(floors))
                summary[attr][name] = entry
                per_prompt[attr][name] = point
                per_prompt[attr][name + "_ci95"] = holding(percentile_interval(per_boot), point)
            pop = population_rd(frequencies(c), share_replicates(c, replicates, seed * 1000 + a_index))
            summary[attr]["rd_population"] = {"estimate": _num(pop["suite_estimate"]),
                                              "ci95": _pair(pop["suite_ci95"])}
            per_prompt[attr]["rd_population"] = pop
        # Unreadable files are their own count, outside every rate's denominator: they were never looked at.
        readable = self.n_images - self.n_unreadable
        total = int(readable.sum())
        summary["n_images"] = int(self.n_images.sum())
        summary["n_unreadable"] = int(self.n_unreadable.sum())
        summary["face_rate"] = _num(self.n_faces.sum() / total) if total else None
        summary["fidelity"] = (
            {"metric": "concept_match", "value": _num(self.concept_matches.sum() / total)}
            if self.concept_matches is not None and total else None
        )
        prompts = []
        for i, p in enumerate(self.prompts):
            row: dict[str, Any] = {
                "id": p.id, "text": p.text, "concept": p.concept,
                "n_images": int(self.n_images[i]), "n_faces": int(self.n_faces[i]),
                "n_unreadable": int(self.n_unreadable[i]),
                "counts": {a: dict(zip(METRIC_ATTRIBUTES[a], map(int, c[i]))) for a, c in self.counts.items()},
            }
            row["rd_population"] = {
                a: {"estimate": _num(per_prompt[a]["rd_population"]["estimate"][i]),
                    "ci95": _pair(per_prompt[a]["rd_population"]["ci95"][i])} if a in per_prompt else None
                for a in METRIC_ATTRIBUTES
            }
            for key in ("rd", "rd_ci95", "noise_floor", *PER_PROMPT_METRICS, *(m + "_ci95" for m in TARGET_METRICS)):
                row[key] = {
                    a: (_pair(per_prompt[a][key][i]) if key.endswith("ci95") else _num(per_prompt[a][key][i]))
                    if a in per_prompt else None
                    for a in METRIC_ATTRIBUTES
                }
            if self.concept_matches is not None:
                row["fidelity"] = _num(self.concept_matches[i] / readable[i]) if readable[i] else None
            prompts.append(row)
        return {"summary": summary, "prompts": prompts, "target": target.to_json()}

    def _target_metrics(self, target: Target, attr: str) -> dict[str, Any]:
        """Distances to the target as functions of counts (..., P, K), the target fixed per prompt."""
        goal = target.matrix(attr, self.prompts)
        return {name: (lambda c, fn=fn: fn(c, goal)) for name, fn in TARGET_METRICS.items()}


    def _bootstrap(
        self, replicates: int, seed: int, goals: Mapping[str, Mapping[str, Any]]
    ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
        """Bootstrap replicates of every skew metric and distance to the target (`goals`: attribute -> name
        -> fn): {(attribute, metric): (per_prompt (B, P), suite (B,))}.

        When every face has both a gender and a race label, gender and race are the marginals of the
        joint gender×race resample: one resample serves all three (coherent, and a third of the work).
        """
        out = {}
        groups: dict[str, dict[str, Any]] = {a: {} for a in self.counts}
        joint = self.counts.get(JOINT)
        shared = joint is not None and _marginals_match(joint, self.counts["gender"], self.counts["race"])
        for attr in self.counts:
            for name, fn in {**SKEW_METRICS, **goals[attr]}.items():
                if shared and attr in ("gender", "race"):
                    groups[JOINT][attr, name] = _marginal(fn, attr)
                else:
                    groups[attr][attr, name] = fn
        for j, (attr, metrics) in enumerate(groups.items()):
            if metrics:
                out.update(bootstrap_metrics(self.counts[attr], metrics, replicates, seed=seed * 1000 + j))
        return out


def holding(interval: np.ndarray, point: Any) -> np.ndarray:
    """A percentile interval (..., 2) widened, where needed, to hold its point estimate (...): a biased
    statistic's bootstrap distribution can lie wholly on one side of it (rd 0 of counts 50/50/50/50 has
    replicates that are all above 0)."""
    out = np.array(interval, dtype=float)
    point = np.asarray(point, dtype=float)
    out[..., 0] = np.fmin(out[..., 0], point)
    out[..., 1] = np.fmax(out[..., 1], point)
    return out


def _joint_view(c: np.ndarray) -> np.ndarray:
    """Joint gender×race counts (..., 8) as (..., 2 genders, 4 races): JOINT_CLASSES is gender-major."""
    return c.reshape(c.shape[:-1] + (len(ATTRIBUTES["gender"]), len(ATTRIBUTES["race"])))


def _marginal(fn: Any, attr: str) -> Any:
    axis = -1 if attr == "gender" else -2
    return lambda c: fn(_joint_view(c).sum(axis=axis))


def _marginals_match(joint: np.ndarray, gender: np.ndarray, race: np.ndarray) -> bool:
    view = _joint_view(joint)
    return bool((view.sum(axis=-1) == gender).all() and (view.sum(axis=-2) == race).all())


def summarize(frame: MetricFrame, replicates: int = 1000, seed: int = 0, target: Target = UNIFORM) -> dict[str, Any]:
    """Functional alias of MetricFrame.summarize."""
    return frame.summarize(replicates, seed, target)


def results_frame(results: Mapping[str, Any]) -> pd.DataFrame:
    """One row per prompt from a results.json dict: counts, shares, rd with ci95 and noise floor, kl, entropy;
    calibrated audits add corrected shares and rd with ci95 (columns ending _corrected, _corrected_lo/hi)."""
    rows = []
    for p in results["prompts"]:
        row: dict[str, Any] = {
            "id": p["id"], "text": p["text"], "concept": p.get("concept"),
            "n_images": p["n_images"], "n_faces": p["n_faces"],
            "n_unreadable": p.get("n_unreadable", 0),
            "face_rate": (p["n_faces"] / (p["n_images"] - p.get("n_unreadable", 0))
                          if p["n_images"] > p.get("n_unreadable", 0) else math.nan),
        }
        for attr, classes in METRIC_ATTRIBUTES.items():
            if p["rd"].get(attr) is None and attr not in p["counts"]:
                continue
            shares = frequencies([p["counts"][attr][c] for c in classes])
            for c, s in zip(classes, shares):
                row[f"share_{attr}_{c}"] = s
            lo, hi = p["rd_ci95"][attr] or (None, None)
            row.update({
                f"rd_{attr}": _nan(p["rd"][attr]), f"rd_{attr}_lo": _nan(lo), f"rd_{attr}_hi": _nan(hi),
                f"noise_floor_{attr}": _nan(p["noise_floor"][attr]),
            })
            pop = (p.get("rd_population") or {}).get(attr)
            if pop:
                lo, hi = pop["ci95"] or (None, None)
                row.update({f"rd_{attr}_population": _nan(pop["estimate"]),
                            f"rd_{attr}_population_lo": _nan(lo), f"rd_{attr}_population_hi": _nan(hi)})
            row.update({f"{m}_{attr}": _nan(p[m][attr]) for m in PER_PROMPT_METRICS if m in p})
            corrected = (p.get("corrected") or {}).get(attr)  # only in calibrated audits
            if corrected:
                lo, hi = corrected["rd_ci95"] or (None, None)
                row.update({f"share_{attr}_{c}_corrected": _nan(corrected["shares"][c]) for c in classes})
                row.update({f"rd_{attr}_corrected": _nan(corrected["rd"]),
                            f"rd_{attr}_corrected_lo": _nan(lo), f"rd_{attr}_corrected_hi": _nan(hi)})
        if "fidelity" in p:
            row["fidelity"] = _nan(p["fidelity"])
        rows.append(row)
    return pd.DataFrame(rows)


def _num(x: Any) -> float | None:
    """A JSON-safe float: NaN becomes None (null)."""
    x = float(x)
    return None if math.isnan(x) else x


def _pair(a: Any) -> list[float | None] | None:
    lo, hi = (_num(v) for v in a)
    return None if lo is None else [lo, hi]


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)
