"""Image-token sampling, the one implementation every family uses: the settings, presets, one per-image
random stream and one sampler.

Settings enter once, where input enters (the CLI or `audit()`): `settings(...)` checks the values and
applies a preset. A family resolves them against its own defaults with `Sampling.resolve`, which refuses a
key the family does not know; a family that takes extra keys (diffusers: steps, height, ...) names them.

Why a counter-based random stream: a shared torch.Generator hands out numbers in batch order, so an image
would depend on what else is in its batch. Here the uniform number for image token t of the image with seed
s is a pure function hash(s, t), computed with the same integer arithmetic on any device, and the token is
drawn by inverse CDF over the filtered distribution. An image therefore depends only on its prompt, seed
and settings (docs/architecture.md, "Sampling").
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from ..types import FairgenError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that compute: the CLI reads presets and checks values here, and
# `fairgen --help` should not wait for torch's import (seconds).

# The paper's sampling (Liu et al., arXiv 2502.03429): the one definition of `--preset paper`.
PRESETS: dict[str, dict[str, float]] = {"paper": {"cfg": 3.0, "temperature": 0.9, "top_p": 0.6}}
KEYS = ("cfg", "temperature", "top_p", "top_k")
_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Sampling:
    """Token-sampling settings.

    cfg: classifier-free guidance scale on logits (1 = no guidance, no unconditional rows). temperature:
    0 = greedy. top_p: nucleus threshold in (0, 1] (1 = off). top_k: keep the k most likely codes
    (None = off)."""

    cfg: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None

    def check(self, who: str = "sampling") -> Sampling:
        """self, when every value is in range; else FairgenError naming `who`."""
        if self.cfg < 0 or self.temperature < 0:
            raise FairgenError(f"{who}: cfg and temperature must be >= 0 (got {self.cfg}, {self.temperature})")
        if not 0.0 < self.top_p <= 1.0:
            raise FairgenError(f"{who}: top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k is not None and self.top_k < 1:
            raise FairgenError(f"{who}: top_k must be >= 1 (got {self.top_k})")
        return self

    def resolve(self, given: Mapping[str, Any], who: str, extra: Collection[str] = ()) -> Sampling:
        """These defaults updated by generate()'s keyword arguments (None: the default). A key outside KEYS
        and `extra` (keys the family reads itself) is a FairgenError; extra keys are left to the caller."""
        unknown = set(given) - set(KEYS) - set(extra)
        if unknown:
            known = ", ".join([*KEYS, *extra])
            raise FairgenError(f"{who}: unknown sampling setting(s) {sorted(unknown)}; known: {known}")
        chosen = {k: v for k, v in given.items() if k in KEYS and v is not None}
        try:
            s = replace(self, **{k: (int(v) if k == "top_k" else float(v)) for k, v in chosen.items()})
        except (TypeError, ValueError):
            raise FairgenError(f"{who}: sampling settings must be numbers (got {chosen})") from None
        return s.check(who)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def guide(self, logits: torch.Tensor) -> torch.Tensor:
        """[2B, V] logits, conditional rows first, -> guided [B, V] (on logits, as upstream Janus and Emu3
        do); [B, V] unchanged when cfg is 1."""
        if self.cfg == 1.0:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + self.cfg * (cond - uncond)


def settings(preset: str | None = None, **given: float | int | None) -> dict[str, Any]:
    """The sampling settings of a command: a preset (PRESETS) overridden by the values given (None: not
    given), checked once here. Keys a family does not know are refused by the family (Sampling.resolve)."""
    out: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise FairgenError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        out.update(PRESETS[preset])
    out.update({k: v for k, v in given.items() if v is not None})
    check_values(out)
    return out


def preset_help() -> str:
    """The presets for a --preset help text: "'paper' = cfg 3.0, temperature 0.9, top_p 0.6"."""
    return "; ".join(f"'{name}' = " + ", ".join(f"{k} {v}" for k, v in values.items())
                     for name, values in PRESETS.items())


def check_values(given: Mapping[str, Any]) -> None:
    """Range checks of the common keys in a settings dict (cfg, temperature >= 0, top_p in (0, 1],
    top_k >= 1); other keys are the family's to check."""
    common = {k: v for k, v in given.items() if k in KEYS and v is not None}
    Sampling().resolve(common, "sampling")


# -- the per-image random stream --------------------------------------------------------------------------
def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Avalanche hash of 32-bit values held in int64 (lowbias32-style). Multipliers are below 2**31, so
    every product fits in int64 and nothing overflows on any device."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def seed_keys(seeds: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """One 32-bit stream key per image from its seed (any Python int; all 64 low bits matter): int64 [B]."""
    import torch

    lo = torch.tensor([int(s) & _M32 for s in seeds], dtype=torch.long, device=device)
    hi = torch.tensor([(int(s) >> 32) & _M32 for s in seeds], dtype=torch.long, device=device)
    return _mix32(lo ^ _mix32(hi ^ 0x5BD1E995))


def uniforms(keys: torch.Tensor, position: int) -> torch.Tensor:
    """The uniform number in (0, 1) of each stream at `position`: float64 [B], 24 random bits."""
    import torch

    bits = _mix32(keys ^ _mix32(torch.full_like(keys, (position + 0x632BE5AB) & _M32)))
    return ((bits >> 8).double() + 0.5) / float(1 << 24)


def uniform_table(seeds: Sequence[int], steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Every image's numbers for positions 0..steps-1 at once: float64 [B, steps], equal to
    uniforms(seed_keys(seeds), t) column by column (a token loop then never waits on the host)."""
    import torch

    keys = seed_keys(seeds, device)
    pos = _mix32((torch.arange(steps, dtype=torch.long, device=device) + 0x632BE5AB) & _M32)
    bits = _mix32(keys[:, None] ^ pos[None, :])
    return ((bits >> 8).double() + 0.5) / float(1 << 24)


# -- the sampler ------------------------------------------------------------------------------------------
def filter_probs(probs: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Zero all but the top_k most likely tokens and then all but the smallest set holding top_p of the
    mass (the most likely token always stays). probs: [B, K]; returns unnormalised [B, K]."""
    import torch

    if top_k is not None and top_k < probs.shape[1]:
        kth = probs.topk(top_k, dim=1).values[:, -1:]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if top_p is not None and top_p < 1.0:
        keep = _nucleus_on_host(probs, top_p) if probs.device.type == "cpu" else _nucleus(probs, top_p)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The top-p rule: bool [B, K], True on the tokens of the smallest set holding top_p of each row's mass
    (rows sorted by probability, ties in vocabulary order; a token is kept while the mass ahead of it is
    below top_p)."""
    sorted_p, order = probs.sort(dim=1, descending=True, stable=True)
    before = sorted_p.cumsum(1) - sorted_p  # mass strictly ahead of each token
    keep_sorted = before < top_p * sorted_p.sum(1, keepdim=True)
    return keep_sorted.new_zeros(keep_sorted.shape).scatter(1, order, keep_sorted)


NUCLEUS_CANDIDATES = 64  # tokens _nucleus_on_host looks at before sorting a whole row
NUCLEUS_MARGIN = 1e-3  # share of a row's mass within which its cut is left to _nucleus


def _nucleus_on_host(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """_nucleus's mask, computed from each row's NUCLEUS_CANDIDATES likeliest tokens instead of a sort of
    the whole row (that sort was 14 % of fairgen-tiny's generation on a CPU; docs/fix.md). A row whose cut
    is not clear of rounding (the mass ahead of a candidate within NUCLEUS_MARGIN of the threshold, which
    the order of a sum can move), that is not among the candidates, or that falls between two equal
    probabilities (whose order topk does not fix) goes through _nucleus: the mask is _nucleus's, row for
    row (tests/test_tiny_units.py). It syncs with the host, hence CPU tensors only."""
    import torch

    k = min(NUCLEUS_CANDIDATES, probs.shape[1])
    values, index = probs.topk(k, dim=1)  # descending
    before = values.cumsum(1) - values
    total = probs.sum(1, keepdim=True)
    threshold, margin = top_p * total, NUCLEUS_MARGIN * total
    keep_top = before < threshold
    count = keep_top.sum(1, keepdim=True)  # >= 1: nothing is ahead of the likeliest token
    doubtful = ((before - threshold).abs() < margin).any(1)
    if k < probs.shape[1]:
        doubtful |= before[:, -1] < threshold[:, 0] + margin[:, 0]  # the cut may lie beyond the candidates
    last_kept = values.gather(1, count - 1)
    first_cut = values.gather(1, count.clamp(max=k - 1))
    doubtful |= ((count < k) & (last_kept == first_cut))[:, 0]
    keep = keep_top.new_zeros(probs.shape).scatter(1, index, keep_top)
    if bool(doubtful.any()):
        keep[doubtful] = _nucleus(probs[doubtful], top_p)
    return keep


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the first token whose cumulative mass exceeds u * total. probs [B, K] (unnormalised,
    zeros never drawn), u float64 [B] in (0, 1). Returns LongTensor[B]."""
    import torch

    cdf = probs.double().cumsum(1)
    target = (u * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=probs.shape[1] - 1)


def sample(logits: torch.Tensor, s: Sampling, u: torch.Tensor) -> torch.Tensor:
    """One code per row from guided logits [B, V] -> LongTensor[B]: greedy at temperature 0, else
    temperature, top-k, top-p and an inverse-CDF draw with each row's uniform number u (float64 [B]).
    On a GPU only device ops, no host sync (a CUDA graph can capture it); on the CPU top-p looks at the
    rows once (_nucleus_on_host)."""
    import torch

    logits = logits.float()
    if s.temperature == 0:
        return logits.argmax(-1)
    if s.temperature != 1.0:  # x / 1.0 is x exactly: no kernel for it
        logits = logits / s.temperature
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        return _sample_top_k(logits, s, u)
    probs = torch.softmax(logits, dim=-1)
    return draw(filter_probs(probs, s.top_k, s.top_p), u)


def _sample_top_k(logits: torch.Tensor, s: Sampling, u: torch.Tensor) -> torch.Tensor:
    """sample()'s rule when top-k is on, computed on the k kept tokens only: their softmax, the top-p cut
    on those (already sorted) probabilities, then the same inverse-CDF draw over them in vocabulary order.
    The same distribution and draw as filtering the whole row (up to float rounding and the order of
    exactly tied logits), without sorting and summing all V entries: VILA-U keeps 900 of 16384 codes, four
    draws per image position (docs/performance.md: its 7B step went from 25.1 to 19.1 ms on H100s)."""
    values, index = logits.topk(s.top_k, dim=-1)  # descending
    probs = values.softmax(dim=-1)
    if s.top_p < 1.0:
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= s.top_p, 0.0)
    vocab, order = index.sort(-1)  # back to vocabulary order, the order draw() walks the full row in
    pick = draw(probs.gather(-1, order), u)
    return vocab.gather(-1, pick.unsqueeze(-1)).squeeze(-1)


__all__ = ["KEYS", "PRESETS", "Sampling", "check_values", "draw", "filter_probs", "sample", "seed_keys",
           "preset_help", "settings", "uniform_table", "uniforms"]
