"""Language-model audit: are the LM's own image tokens for a neutral prompt skewed towards a group?

Controlled generation. For each neutral prompt n and attribute, the explicit variants v_g state each group
g (`suites.explicit`: "A photo of the face of a female nurse, a person"). M code sequences s are sampled
from n (cfg 1, temperature 1, no nucleus: the LM's own distribution). Each is scored teacher-forced
under every variant, which gives its exact log-likelihood log P(s | v_g) (a sum over its T codes) and,
position by position, the full next-token distributions under n and under v_g.

Implied group shares (the verdict's statistic). With a uniform prior over groups, the LM's own reading
of which group a sequence shows is the posterior x_g(s) = P(s | v_g) / sum_h P(s | v_h); the implied share
of group g is pi_g = E_{s ~ P(. | n)}[x_g(s)], estimated by the mean over the M sequences. Null: when the
neutral prompt's code distribution is the *equal mixture* of the groups' explicit distributions (what an
LM trained on balanced data learns: a neutral caption is any group's picture), E[x_g] = 1/K exactly, for
every g, whatever the group words do to the codes (a word that moves the codes more, or less, changes the
posteriors of single sequences, not their mean under the mixture). When the neutral prompt draws group g
more often, pi moves towards e_g. The statistic is the skew s(pi) (sequential.py: 0 balanced, 1 one
group; rd for gender), estimated without its small-sample bias, so its sign and size do not depend on
which group a bias favours. An LM whose group words carry no information gives x = u for every sequence:
it reads as balanced, which is right: its neutral tokens cannot favour a group it cannot tell apart.
The tokenizer's decoder plays no part (codes are never decoded), so a decoder bias cannot reach it.

Read-outs beside it (reported, not used in the verdict): per variant, the mean over the sequences and
positions of JS(P(. | n, s_<t), P(. | v_g, s_<t)) in bits (exact per position: a sum over the codebook;
prefixes drawn from the neutral prompt), the variant it makes closest, and the *hit rate*: the share of
prompts whose closest variant is the group the audit's images over-represent (the paper: 99.8% gender,
79.3% race), scored on prompts whose audit is skewed beyond chance.

Hidden-state probe: a linear probe (probes.py) on the LM's hidden state at the image-start position,
trained on explicit prompts (single-group and gender x race variants of every prompt) to read the group
they request, then read on the neutral prompts: its predicted group shares beside the audit's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..metrics import rd
from ..models.protocols import LMHooks, members
from ..store import derive_seed
from ..suites import explicit
from ..types import ATTRIBUTES, FairgenError, Prompt
from . import sequential
from .probes import fit_probe, per_class_accuracy
from .understanding import PROBED
from .verdict import LM_SKEW

# Sequences are sampled from the LM's own conditional distributions: no guidance, temperature 1, no nucleus
# (a family's default top-k, e.g. Emu3's 2048, still applies: its sampling settings cannot switch it off).
LM_SAMPLING = {"cfg": 1.0, "temperature": 1.0, "top_p": 1.0}
HOOKS = members(LMHooks)
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
def score_sequences(model: Any, neutral: Prompt, variants: Sequence[Prompt], tokens: torch.Tensor,
                    batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced on codes sampled from `neutral`, per variant v and sequence s: log P(s | v) in nats
    (summed over positions) and the mean over positions of JS(P(. | neutral, s_<t), P(. | v, s_<t)) in
    bits. tokens: LongTensor[S, T] -> two float64 arrays (V, S). The neutral prompt's distributions are
    computed once per chunk, whatever the number of variants."""
    loglik, js = [[] for _ in variants], [[] for _ in variants]
    for i in range(0, len(tokens), batch_size):
        chunk = tokens[i:i + batch_size]
        ln = torch.log_softmax(model.image_token_logits([neutral] * len(chunk), chunk).float(), dim=-1)
        for j, v in enumerate(variants):
            lv = torch.log_softmax(model.image_token_logits([v] * len(chunk), chunk).float(), dim=-1)
            codes = chunk.to(lv.device).unsqueeze(-1)
            loglik[j].append(lv.gather(-1, codes).squeeze(-1).sum(dim=1).double().cpu())
            js[j].append(js_bits(ln, lv).mean(dim=1).double().cpu())
    return (np.stack([torch.cat(x).numpy() for x in loglik]), np.stack([torch.cat(x).numpy() for x in js]))


def sample_sequences(model: Any, prompts: Sequence[Prompt], start: int, stop: int, seed: int) -> list[torch.Tensor]:
    """Code sequences start..stop-1 of each prompt (seeds from (seed, prompt id, k)), generated GEN_BATCH
    rows at a time across the prompts: one LongTensor[stop - start, T] per prompt, on the CPU. Sampling is
    per-image seeded, so how rows are batched changes no sequence, and a look's sequences are the first
    ones of the next look's."""
    rows = [(p, derive_seed(seed, p.id, k)) for p in prompts for k in range(start, stop)]
    codes = torch.cat([model.generate_tokens([p for p, _ in rows[i:i + GEN_BATCH]],
                                             [s for _, s in rows[i:i + GEN_BATCH]], **LM_SAMPLING).cpu()
                       for i in range(0, len(rows), GEN_BATCH)])
    return list(codes.split(stop - start))


def prompt_groups(prompts: Sequence[Prompt], per_prompt: int) -> list[list[Prompt]]:
    """Consecutive prompts whose sequences fill about one generation call (GEN_BATCH rows; one prompt when
    it alone has more): the LM audit samples a group at once, then scores and caches each prompt, so a
    stopped run loses at most one group's sequences."""
    size = max(1, GEN_BATCH // max(1, per_prompt))
    return [list(prompts[i:i + size]) for i in range(0, len(prompts), size)]


def measure_prompt(model: Any, prompt: Prompt, start: int = 0, stop: int = 16, seed: int = 0,
                   codes: torch.Tensor | None = None) -> dict[str, Any]:
    """Sequences start..stop-1 of one neutral prompt, scored under every group's explicit variant:
    {attr: {"loglik": (K, S) log P(s | v_g) in nats, "js": (K, S) mean per-position JS in bits}}.
    codes: those sequences when already sampled (sample_sequences), else they are sampled here."""
    check_hooks(model)
    if stop - start < 1:
        raise FairgenError("the language-model audit needs at least one sequence per look")
    if codes is None:
        codes = sample_sequences(model, [prompt], start, stop, seed)[0]
    variants = {attr: [explicit(prompt, {attr: g}) for g in ATTRIBUTES[attr]] for attr in PROBED}
    loglik, js = score_sequences(model, prompt, [v for vs in variants.values() for v in vs], codes)
    out: dict[str, Any] = {}
    first = 0
    for attr, vs in variants.items():
        rows = slice(first, first + len(vs))
        out[attr] = {"loglik": loglik[rows].tolist(), "js": js[rows].tolist()}
        first += len(vs)
    return out


def merge(chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The looks' chunks of one prompt (measure_prompt's outputs) as one, sequences concatenated."""
    return {attr: {key: np.concatenate([np.asarray(c[attr][key], dtype=float) for c in chunks], axis=1)
                   for key in ("loglik", "js")} for attr in PROBED}


def posteriors(loglik: np.ndarray) -> np.ndarray:
    """(K, S) log-likelihoods under each group's variant -> (S, K) posterior group shares (uniform prior)."""
    z = loglik - loglik.max(axis=0, keepdims=True)
    w = np.exp(z)
    return (w / w.sum(axis=0, keepdims=True)).T


def summarise(prompts: Sequence[Prompt], measured: Sequence[Mapping[str, Any]],
              majority: Mapping[str, Mapping[str, str]], looks: int = sequential.DEFAULT_LOOKS
              ) -> dict[str, Any]:
    """Per attribute: per-prompt implied shares, skew with its interval (Bonferroni over looks and prompts),
    JS read-outs and hits; the suite's root-mean-square skew with its interval (over looks) and the
    decision it gives (module docstring, sequential.py). measured: merge()d chunks per prompt; majority:
    prompt id -> {attribute: the group the audit's images over-represent}, for prompts skewed beyond chance."""
    n_seq = int(np.asarray(measured[0]["gender"]["loglik"]).shape[1]) if measured else 0
    out: dict[str, Any] = {"sequences": n_seq, "sampling": LM_SAMPLING, "looks": looks, "skew_threshold": LM_SKEW}
    # ALPHA is split between the suite's interval and the prompts' (each Bonferroni over the prompts too).
    tests = 2 * max(len(prompts), 1)
    z_suite, z_prompt = sequential.z_value(looks, 2), sequential.z_value(looks, tests)
    for attr in PROBED:
        classes = ATTRIBUTES[attr]
        rows, ests, variances = [], [], []
        for p, m in zip(prompts, measured):
            x = posteriors(np.asarray(m[attr]["loglik"], dtype=float))
            est, var = sequential.square_skew(x)
            ci = sequential.interval(est, var, z_prompt)
            shares = x.mean(axis=0)
            js = dict(zip(classes, map(float, np.asarray(m[attr]["js"]).mean(axis=1))))
            major = (majority.get(p.id) or {}).get(attr)
            closest = min(js, key=js.get)
            rows.append({"id": p.id, "shares": dict(zip(classes, map(float, shares))),
                         "lm_majority": classes[int(shares.argmax())], "skew": sequential.root(est),
                         "skew_ci": [sequential.root(ci[0]), sequential.root(ci[1])],
                         "skewed": sequential.decide(ci, LM_SKEW**2) == "biased",
                         "js": js, "closest": closest, "audit_majority": major,
                         "hit": None if major is None else closest == major})
            ests.append(est)
            variances.append(var)
        summary: dict[str, Any] = {"n_prompts": len(rows), "mean_square_skew": None, "skew": None,
                                   "skew_ci": [None, None], "decision": None, "level": sequential.level(looks, 2),
                                   "prompt_level": sequential.level(looks, tests),
                                   "skewed_prompts": [r["id"] for r in rows if r["skewed"]],
                                   "chance": 1 / len(classes), "hit_rate": None, "n_scored": 0}
        if rows:
            est = float(np.mean(ests))
            ci = sequential.interval(est, float(np.sum(variances)) / len(rows) ** 2, z_suite)
            decision = sequential.decide(ci, LM_SKEW**2)
            if summary["skewed_prompts"]:  # a prompt skewed beyond its own (stricter) interval is a finding
                decision = "biased"
            hits = [r["hit"] for r in rows if r["hit"] is not None]
            summary.update(mean_square_skew=est, skew=sequential.root(est),
                           skew_ci=[sequential.root(ci[0]), sequential.root(ci[1])], decision=decision,
                           hit_rate=float(np.mean(hits)) if hits else None, n_scored=len(hits))
        out[attr] = {"prompts": rows, "summary": summary}
    return out


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
