"""Language-model audit: does the LM itself put a neutral prompt next to one group's explicit prompt?

Controlled generation. For each neutral prompt n and attribute, the explicit variants v_g state each group
g (`suites.explicit`: "A photo of the face of a female nurse, a person"). We compare the LM's image-token
distribution under n with that under each v_g.

Estimator (teacher-forced Jensen-Shannon). M code sequences are sampled from n and M from v_g (cfg 1,
temperature 1: the LM's own distributions, whose divergence is what we measure). Along every sequence s
the model is run twice, teacher-forced on the same prefix, once conditioned on n and once on v_g, which
gives at each image position t the two full next-token distributions P_n(. | s_<t) and P_v(. | s_<t)
over the codebook. Then

    JS(n, v_g) = mean over the 2M sequences and the T positions of JS(P_n(. | s_<t), P_v(. | s_<t))

in bits (0 = identical, 1 = disjoint). Each term is exact (a sum over the whole codebook), so the only
randomness is which prefixes are visited; prefixes come from both prompts, so a region that only one of
them visits still counts. It is the expected per-token divergence of the two conditionals along prefixes
drawn from both, not the sequence-level JS (which has no per-token decomposition), and it is cheap: 2M
teacher-forced passes per pair. Why not histograms: with a codebook of K codes and M*T sampled tokens, a
histogram JS is dominated by its finite-sample bias when M*T is not >> K (two samples of the *same*
distribution read as far apart); the paper's unigram version is reported beside it for reproduction
(`unigram_js`: JS of the two code histograms pooled over positions).

Read-outs per attribute: the group whose variant is closest to the neutral prompt; the *hit rate*, the
share of prompts whose closest variant is the group the audit's images over-represent (the paper: 99.8%
gender, 79.3% race; only prompts whose images are skewed beyond chance are scored); and the *closeness contrast* c = (J_other - J_major) / (J_other + J_major), with
J_major the JS to the majority group's variant and J_other the mean JS to the other groups' variants:
about 0 when the LM treats the neutral prompt as no closer to the majority group than to the others, near
1 when the neutral prompt is the majority variant in all but name. Its 95% interval resamples the
sequences within each (prompt, variant) pair.

Hidden-state probe: a linear probe (probes.py) on the LM's hidden state at the image-start position,
trained on explicit prompts (single-group and gender x race variants of every prompt) to read the group
they request, then read on the neutral prompts: its predicted group shares beside the audit's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..metrics import percentile_interval, rd
from ..models.protocols import LMHooks, members
from ..store import derive_seed
from ..suites import explicit
from ..types import ATTRIBUTES, FairgenError, Prompt
from .probes import fit_probe, per_class_accuracy
from .understanding import PROBED

# Sequences are sampled from the LM's own conditional distributions: no guidance, temperature 1, no nucleus
# (a family's default top-k, e.g. Emu3's 2048, still applies: its sampling settings cannot switch it off).
LM_SAMPLING = {"cfg": 1.0, "temperature": 1.0, "top_p": 1.0}
HOOKS = members(LMHooks)
REPLICATES = 1000
# Code sequences generated per call: bounds the KV cache of large models (64 rows of Janus-Pro-7B's 576
# codes take about 20 GB) while batching small ones.
GEN_BATCH = 64


def check_hooks(model: Any) -> None:
    """Raise FairgenError unless the model exposes the LM hooks the audit needs (docs/locate.md)."""
    if not isinstance(model, LMHooks):
        raise FairgenError(f"model {model.spec} lacks the language-model hooks ({', '.join(HOOKS)})")


def js_bits(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits between distributions given as log-probabilities [..., V] -> [...]."""
    logm = torch.logaddexp(logp, logq) - np.log(2.0)
    # 0 * log 0 = 0: a code one distribution never gives contributes nothing to its own KL term.
    kl_p = torch.where(logp > -torch.inf, logp.exp() * (logp - logm), 0.0).sum(-1)
    kl_q = torch.where(logq > -torch.inf, logq.exp() * (logq - logm), 0.0).sum(-1)
    return (0.5 * (kl_p + kl_q)).clamp(min=0.0) / np.log(2.0)


@torch.no_grad()
def sequence_js(model: Any, a: Prompt, b: Prompt, tokens: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Per sequence, the mean over positions of the JS between the next-token distributions conditioned on
    a and on b, teacher-forced on the same codes. tokens: LongTensor[S, T] -> float64 (S,)."""
    out = []
    for i in range(0, len(tokens), batch_size):
        chunk = tokens[i:i + batch_size]
        la = torch.log_softmax(model.image_token_logits([a] * len(chunk), chunk).float(), dim=-1)
        lb = torch.log_softmax(model.image_token_logits([b] * len(chunk), chunk).float(), dim=-1)
        out.append(js_bits(la, lb).mean(dim=1).double().cpu())
    return torch.cat(out).numpy()


def unigram_js(x: torch.Tensor, y: torch.Tensor) -> float:
    """The paper's version: JS (bits) between the code histograms of two sets of sequences [S, T]."""
    n_codes = int(max(x.max(), y.max())) + 1
    hx = torch.bincount(x.flatten().cpu(), minlength=n_codes).double()
    hy = torch.bincount(y.flatten().cpu(), minlength=n_codes).double()
    with torch.no_grad():
        return float(js_bits(torch.log(hx / hx.sum()), torch.log(hy / hy.sum())))


def _sample_many(model: Any, prompts: Sequence[Prompt], m: int, seed: int) -> list[torch.Tensor]:
    """m code sequences per prompt (seeds from (seed, prompt id, k)), generated GEN_BATCH rows at a time:
    one LongTensor[m, T] per prompt. Sampling is per-image seeded, so batching changes no sequence."""
    rows = [(p, derive_seed(seed, p.id, k)) for p in prompts for k in range(m)]
    codes = torch.cat([model.generate_tokens([p for p, _ in rows[i:i + GEN_BATCH]],
                                             [s for _, s in rows[i:i + GEN_BATCH]], **LM_SAMPLING).cpu()
                       for i in range(0, len(rows), GEN_BATCH)])
    return list(codes.split(m))


def measure_prompt(model: Any, prompt: Prompt, sequences: int = 16, seed: int = 0) -> dict[str, Any]:
    """Controlled generation for one neutral prompt: {attr: {"js_seq": (K, 2M) per-sequence JS to each
    group's variant (the neutral prompt's M sequences first), "unigram": {group: histogram JS}}}."""
    check_hooks(model)
    if sequences < 2:
        raise FairgenError("the language-model audit needs at least 2 sequences per prompt")
    variants = {attr: [explicit(prompt, {attr: g}) for g in ATTRIBUTES[attr]] for attr in PROBED}
    neutral, *own = _sample_many(model, [prompt, *(v for vs in variants.values() for v in vs)], sequences, seed)
    samples = iter(own)
    out: dict[str, Any] = {}
    for attr, vs in variants.items():
        js_seq, uni = [], {}
        for g, v in zip(ATTRIBUTES[attr], vs):
            codes = next(samples)
            js_seq.append(sequence_js(model, prompt, v, torch.cat([neutral, codes])).tolist())
            uni[g] = unigram_js(neutral, codes)
        out[attr] = {"js_seq": js_seq, "unigram": uni}
    return out


def summarise(prompts: Sequence[Prompt], measured: Sequence[Mapping[str, Any]],
              majority: Mapping[str, Mapping[str, str]], seed: int = 0, replicates: int = REPLICATES) -> dict[str, Any]:
    """Per attribute: per-prompt JS, closest variant, hits and contrast; suite hit rates and contrast with its
    interval (module docstring). measured: measure_prompt's output per prompt; majority: prompt id ->
    {attribute: the group the audit's images over-represent}, absent for a prompt not skewed beyond chance
    (it is then reported but not scored)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"sequences": len(measured[0]["gender"]["js_seq"][0]) // 2 if measured else 0,
                           "sampling": LM_SAMPLING}
    for attr in PROBED:
        classes = ATTRIBUTES[attr]
        rows, seqs = [], []
        for p, m in zip(prompts, measured):
            js_seq = np.array(m[attr]["js_seq"], dtype=float)
            js = dict(zip(classes, map(float, js_seq.mean(axis=1))))
            uni = m[attr]["unigram"]
            major = (majority.get(p.id) or {}).get(attr)
            closest, uni_closest = min(js, key=js.get), min(uni, key=uni.get)
            rows.append({"id": p.id, "majority": major, "js": js, "closest": closest, "unigram_js": uni,
                         "unigram_closest": uni_closest, "hit": None if major is None else closest == major,
                         "unigram_hit": None if major is None else uni_closest == major,
                         "contrast": None if major is None else float(_contrast(js_seq.mean(axis=1),
                                                                               classes.index(major)))})
            seqs.append(js_seq)
        out[attr] = {"prompts": rows, "summary": _summary(rows, seqs, attr, replicates, rng)}
    return out


def _contrast(js: np.ndarray, major: int | np.ndarray) -> float | np.ndarray:
    """Closeness contrast of JS values [..., K] to the majority index [...] (module docstring)."""
    js = np.asarray(js, dtype=float)
    major = np.asarray(major)
    j_major = np.take_along_axis(js, major[..., None], axis=-1)[..., 0]
    j_other = (js.sum(axis=-1) - j_major) / (js.shape[-1] - 1)
    total = j_other + j_major
    return np.where(total > 0, (j_other - j_major) / np.where(total > 0, total, 1.0), 0.0)


def _summary(rows: list[dict[str, Any]], js_seq: list[np.ndarray], attr: str, replicates: int,
             rng: np.random.Generator) -> dict[str, Any]:
    classes = ATTRIBUTES[attr]
    scored = [i for i, r in enumerate(rows) if r["majority"] is not None]
    summary: dict[str, Any] = {"n_prompts": len(scored), "chance": 1 / len(classes), "hit_rate": None,
                               "unigram_hit_rate": None, "contrast": None, "contrast_ci95": [None, None]}
    if not scored:
        return summary
    seqs = np.stack([js_seq[i] for i in scored])  # (P, K, 2M)
    major = np.array([classes.index(rows[i]["majority"]) for i in scored])
    # Resample sequences within each (prompt, variant): (B, P, K) JS replicates -> suite-mean contrast.
    draw = rng.integers(seqs.shape[-1], size=(replicates, *seqs.shape))
    boot = np.take_along_axis(seqs[None], draw, axis=-1).mean(axis=-1)
    lo, hi = percentile_interval(_contrast(boot, np.broadcast_to(major, boot.shape[:-1])).mean(axis=1))
    summary.update(hit_rate=float(np.mean([rows[i]["hit"] for i in scored])),
                   unigram_hit_rate=float(np.mean([rows[i]["unigram_hit"] for i in scored])),
                   contrast=float(np.mean([rows[i]["contrast"] for i in scored])), contrast_ci95=[float(lo), float(hi)])
    return summary


def _requests(attr: str) -> list[dict[str, str]]:
    """Explicit requests that name a group of `attr`: single-attribute ones and gender x race pairs."""
    pairs = [{"gender": g, "race": r} for g in ATTRIBUTES["gender"] for r in ATTRIBUTES["race"]]
    return [{attr: g} for g in ATTRIBUTES[attr]] + pairs


@torch.no_grad()
def _hidden(model: Any, prompts: list[Prompt], batch_size: int = 32) -> np.ndarray:
    return np.concatenate([model.image_start_hidden(prompts[i:i + batch_size]).float().cpu().numpy()
                           for i in range(0, len(prompts), batch_size)])


def hidden_probe(model: Any, prompts: Sequence[Prompt], audit_shares: Mapping[str, Mapping[str, Mapping[str, float]]]
                 ) -> dict[str, Any]:
    """Linear probe on the image-start hidden state: trained on explicit variants, read on neutral prompts.

    audit_shares: prompt id -> {attribute: {group: share of the audit's faces}} (absent: no faces).
    Returns {attr: {"variant_accuracy" (balanced, prompts split into two folds: trained on one, read on
    the other), "prompts": [{"id", "probe_shares", "audit_shares"}], "agreement" (probe argmax == audit
    majority), "mae" (mean |probe share - audit share|), "probe_rd", "audit_rd" (suite means)}}."""
    check_hooks(model)
    prompts = list(prompts)
    h_neutral = _hidden(model, prompts)
    out: dict[str, Any] = {}
    for attr in PROBED:
        classes = ATTRIBUTES[attr]
        variants = [(i, explicit(p, req)) for i, p in enumerate(prompts) for req in _requests(attr)]
        x = _hidden(model, [v for _, v in variants])
        y = np.array([classes.index(v.group[attr]) for _, v in variants])
        fold = np.array([i % 2 for i, _ in variants])
        acc = None
        if len(prompts) >= 2:
            recalls = [per_class_accuracy(y[fold != f], fit_probe(x[fold == f], y[fold == f], len(classes))
                                          .predict_proba(x[fold != f]).argmax(1), len(classes)) for f in (0, 1)]
            acc = float(np.nanmean(np.nanmean(recalls, axis=0)))
        shares = fit_probe(x, y, len(classes)).predict_proba(h_neutral)
        rows, agree, err, prd, ard = [], [], [], [], []
        for p, s in zip(prompts, shares):
            audit = (audit_shares.get(p.id) or {}).get(attr)
            rows.append({"id": p.id, "probe_shares": dict(zip(classes, map(float, s))), "audit_shares": audit})
            if audit:
                a = np.array([audit[c] for c in classes])
                agree.append(int(s.argmax()) == int(a.argmax()))
                err.append(float(np.abs(s - a).mean()))
                prd.append(float(rd(s)))
                ard.append(float(rd(a)))
        mean = (lambda v: float(np.mean(v)) if v else None)
        out[attr] = {"variant_accuracy": acc, "n_variants": len(variants), "prompts": rows,
                     "agreement": mean(agree), "mae": mean(err), "probe_rd": mean(prd), "audit_rd": mean(ard)}
    return out
