"""Image quality beside bias: text–image alignment (CLIP score) and no-reference quality (CLIP-IQA).

A fix can make a model less skewed by making it worse; on the synthetic world `fidelity` (the concept cue
read back) shows that, on a real model these two do. Both come from one CLIP checkpoint that the user
names (a local directory or a hub id; nothing is downloaded unless the id is not cached and the user is
online), computed by torchmetrics:

- clip_score = 100 · max(cos(image embedding, prompt embedding), 0) (Hessel et al. 2021, CLIPScore with
  w = 100 as torchmetrics and the diffusion literature report it); higher is better aligned.
- clip_iqa = softmax(100 · [cos(image, "Good photo."), cos(image, "Bad photo.")])[0] (Wang et al. 2023,
  CLIP-IQA), in [0, 1]; higher looks better.

Scores are per image (quality.jsonl in the run directory); summaries are means per prompt and over the
suite with percentile-bootstrap intervals that resample images within each prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..types import FairgenError

QUALITY_METRICS = ("clip_score", "clip_iqa")
# CLIP-IQA's antonym pair for overall quality (Wang et al. 2023).
IQA_ANCHORS = ("Good photo.", "Bad photo.")


class QualityScorer:
    """CLIP score and CLIP-IQA of images, from a CLIP checkpoint (`spec`: local directory or hub id)."""

    def __init__(self, spec: str | Path, device: str = "cpu") -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(str(spec)).eval().to(device)
            self._processor = CLIPProcessor.from_pretrained(str(spec))
        except (OSError, ValueError) as e:
            raise _not_clip(spec, e) from None
        self.spec, self.device = str(spec), torch.device(device)
        self._model = _TensorFeatures(model)

    def provenance(self) -> dict[str, Any]:
        return {"quality_model": self.spec}

    def _pair(self) -> tuple[Any, Any]:
        return self._model, self._processor

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """images: PIL images; prompts: the text each was drawn from. Returns {metric: (N,) float}."""
        import torch
        from torchmetrics.functional.multimodal import clip_score

        if len(images) != len(prompts):
            raise ValueError("one prompt per image")
        # on the scorer's device: torchmetrics' clip_score moves the model to its images' device
        pixels = [torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).to(self.device) for im in images]
        with torch.inference_mode():
            # torchmetrics' clip_score averages its batch; one image at a time keeps a score per image.
            cs = [float(clip_score(p, t, model_name_or_path=self._pair)) for p, t in zip(pixels, prompts)]
            # CLIP-IQA by its formula: torchmetrics 1.9's clip_image_quality_assessment divides a custom
            # CLIP's pixels by data_range and then lets the processor rescale them again (1/255 twice).
            image = self._model.get_image_features(
                **self._processor(images=list(images), return_tensors="pt").to(self.device))
            anchors = self._model.get_text_features(
                **self._processor(text=list(IQA_ANCHORS), return_tensors="pt", padding=True).to(self.device))
            image = image / image.norm(dim=-1, keepdim=True)
            anchors = anchors / anchors.norm(dim=-1, keepdim=True)
            iqa = (100 * image @ anchors.T).softmax(dim=-1)[:, 0]
        return {"clip_score": np.asarray(cs, dtype=float), "clip_iqa": iqa.float().cpu().numpy().astype(float)}


def check_checkpoint(spec: str | Path) -> None:
    """Raise QualityScorer's FairgenError now if `spec` has no CLIP configuration (reads the config only, not
    the weights): for stages that score images much later, such as fix."""
    from transformers import CLIPConfig

    if Path(spec).is_dir() and not (Path(spec) / "config.json").is_file():
        # transformers reads a directory without config.json as "all defaults": refuse it here, as loading
        # the weights later would
        raise _not_clip(spec, FileNotFoundError(f"no config.json in {spec}"))
    try:
        CLIPConfig.from_pretrained(str(spec))
    except (OSError, ValueError) as e:
        raise _not_clip(spec, e) from None


def _not_clip(spec: str | Path, error: Exception) -> FairgenError:
    return FairgenError(f"--quality {spec}: not a loadable CLIP checkpoint ({str(error).splitlines()[0]})")


class _TensorFeatures:
    """A CLIPModel whose get_*_features return the projected embedding tensor.

    transformers 5 returns a ModelOutput (the embedding in pooler_output) where torchmetrics 1.9 expects
    the tensor itself; this is the whole adaptation, nothing else of torchmetrics is replaced.
    """

    def __init__(self, model: Any) -> None:
        self.model, self.config = model, model.config

    def to(self, device: Any) -> "_TensorFeatures":
        self.model.to(device)
        return self

    def get_image_features(self, *args: Any, **kwargs: Any) -> Any:
        return _embedding(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Any:
        return _embedding(self.model.get_text_features(*args, **kwargs))


def _embedding(out: Any) -> Any:
    return getattr(out, "pooler_output", out)


def summarize_quality(
    prompt_ids: Sequence[str], records: Sequence[dict[str, Any]], replicates: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """results.json's "quality" part from quality.jsonl records ({prompt_id, clip_score, clip_iqa}).

    Per prompt: mean and ci95; suite: mean over prompts with ci95 (images resampled within prompts).
    """
    rng = np.random.default_rng(seed)
    by_prompt = {pid: {m: [] for m in QUALITY_METRICS} for pid in prompt_ids}
    for rec in records:
        if rec["prompt_id"] in by_prompt:
            for m in QUALITY_METRICS:
                by_prompt[rec["prompt_id"]][m].append(float(rec[m]))
    out: dict[str, Any] = {"prompts": {}, "suite": {}}
    for m in QUALITY_METRICS:
        means, boots = [], []
        for pid in prompt_ids:
            v = np.asarray(by_prompt[pid][m])
            if v.size == 0:
                continue
            b = v[rng.integers(0, v.size, size=(replicates, v.size))].mean(axis=1)
            means.append(v.mean())
            boots.append(b)
            out["prompts"].setdefault(pid, {})[m] = {
                "mean": float(v.mean()), "ci95": _interval(b), "n": int(v.size)}
        if means:
            suite_boot = np.mean(boots, axis=0)
            out["suite"][m] = {"mean": float(np.mean(means)), "ci95": _interval(suite_boot)}
    return out


def _interval(b: np.ndarray) -> list[float]:
    lo, hi = np.quantile(b, [0.025, 0.975])
    return [float(lo), float(hi)]


QUALITY_RECORDS = "quality.jsonl"


def score_run(
    store: Any,
    plan: Sequence[tuple[Any, int]],
    scorer: QualityScorer,
    batch_size: int = 32,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Score every planned image of a run directory, resumably: quality.jsonl keeps one record per image
    and quality model ({prompt_id, sample, model, clip_score, clip_iqa}); images already scored by the
    same model are not scored again, and another model's scores are never mixed in.

    store: a RunStore (load_image, root). plan: (Prompt, sample) in plan order. progress(n_done) is
    called after each batch. Images that cannot be read are skipped (the audit counts them as
    unreadable). Returns the records of the plan, in plan order.
    """
    import json
    import os

    path = Path(store.root) / QUALITY_RECORDS
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if path.exists():
        data = path.read_bytes()
        good_end = data.rfind(b"\n") + 1  # a partial last line left by a crash is dropped
        for line in data[:good_end].splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("model") == scorer.spec:
                    done.setdefault((rec["prompt_id"], int(rec["sample"])), rec)
        if good_end < len(data):
            with open(path, "r+b") as f:
                f.truncate(good_end)
    todo = [(p, s) for p, s in plan if (p.id, s) not in done]
    for start in range(0, len(todo), batch_size):
        batch = [(p, s, store.load_image(p.id, s)) for p, s in todo[start:start + batch_size]]
        batch = [(p, s, im) for p, s, im in batch if im is not None]
        if batch:
            scores = scorer.score([im for _, _, im in batch], [p.text for p, _, _ in batch])
            new = [{"prompt_id": p.id, "sample": s, "model": scorer.spec,
                    **{m: float(scores[m][i]) for m in QUALITY_METRICS}}
                   for i, (p, s, _) in enumerate(batch)]
            with open(path, "ab") as f:
                f.write("".join(json.dumps(r) + "\n" for r in new).encode())
                f.flush()
                os.fsync(f.fileno())
            done.update({(r["prompt_id"], r["sample"]): r for r in new})
        if progress is not None:
            progress(min(start + batch_size, len(todo)))
    return [done[p.id, s] for p, s in plan if (p.id, s) in done]
