"""Prompt-major training batches over the balanced set: each batch holds whole sets, one image of every
group of an attribute for one neutral prompt, so the BPO loss only ever compares images of one prompt.

A unit is one (neutral prompt, attribute) of the set with m images per group (the rebalanced count);
copy c of a unit is its c-th image of every group. A batch draws distinct units, each with one copy, so
no (prompt, attribute) appears twice in a batch. What a step draws depends only on (seed, stage, step),
which is what makes a resumed run draw the same batches as an uninterrupted one.

Toward a target (`fix --target`), every row also carries its group's weight K * t_g for its prompt's
concept (loss.py says how the losses use it); under the uniform target there are no weights.

Data parallel (several processes): every process draws the same global batch and trains on its share
of the units, `Batch.shard(rank, world)` (units rank, rank + world, ...), so a set is never split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..metrics.target import Target
from ..types import ATTRIBUTES, Prompt
from .data import BalancedSet

# (neutral prompt id, attribute) -> each group's weight K * t_g, in ATTRIBUTES[attribute] order.
Weights = Mapping[tuple[str, str], Sequence[float]]


def target_weights(target: Target, prompts: Sequence[Prompt], attributes: Sequence[str]) -> Weights | None:
    """The weights of every (prompt, attribute) toward `target` (K times its shares for the prompt's
    concept), or None when the target is uniform (every weight 1: the plain balanced losses)."""
    if target.is_uniform:
        return None
    return {(p.id, a): tuple(len(ATTRIBUTES[a]) * float(t) for t in target.shares(a, p.concept))
            for p in prompts for a in attributes}


@dataclass
class Batch:
    """N images of a batch, prompt-major: for each unit drawn, its groups in canonical order.

    rows: the rows of the set's frame; prompts: the neutral prompt texts (what the image log-probability
    is conditioned on); explicit_prompts: the prompts the images were made from ("... a female nurse
    ..."; the explicit anchor is conditioned on them); prompt_ids the neutral prompts' ids; images the
    PIL images; prompt_index, attribute_index, group_index: LongTensor[N], index of the neutral prompt
    in the set, of the attribute in types.ATTRIBUTES, of the group in its attribute; unit_rows: the
    number of rows of each unit, in order (a unit's rows are consecutive); weight: float32 [N], each row's
    target weight (None: the uniform target).
    """

    rows: list[int]
    prompts: list[str]
    explicit_prompts: list[str]
    prompt_ids: list[str]
    images: list[Image.Image]
    prompt_index: torch.Tensor
    attribute_index: torch.Tensor
    group_index: torch.Tensor
    unit_rows: list[int]
    weight: torch.Tensor | None = None

    def shard(self, rank: int, world: int) -> "Batch":
        """The units of process `rank` of `world`: units rank, rank + world, ... with all their rows."""
        starts = np.cumsum([0, *self.unit_rows])
        keep = [r for u in range(rank, len(self.unit_rows), world) for r in range(starts[u], starts[u + 1])]
        index = torch.tensor(keep, dtype=torch.long)
        return Batch(rows=[self.rows[i] for i in keep], prompts=[self.prompts[i] for i in keep],
                     explicit_prompts=[self.explicit_prompts[i] for i in keep],
                     prompt_ids=[self.prompt_ids[i] for i in keep], images=[self.images[i] for i in keep],
                     prompt_index=self.prompt_index[index], attribute_index=self.attribute_index[index],
                     group_index=self.group_index[index], unit_rows=self.unit_rows[rank::world],
                     weight=None if self.weight is None else self.weight[index])


def partners(unit_rows: Sequence[int]) -> list[int]:
    """For every row of a batch, the row of the next group of its unit (cyclic): [2, 2] -> [1, 0, 3, 2]."""
    out, start = [], 0
    for k in unit_rows:
        out += [start + (i + 1) % k for i in range(k)]
        start += k
    return out


class BatchPlan:
    """Units of a balanced set and the batches drawn from them."""

    def __init__(self, data: BalancedSet, units_per_batch: int, seed: int = 0, weights: Weights | None = None):
        """weights: target_weights(...) for every (prompt id, attribute) of the set, or None (uniform)."""
        if data.frame.empty:
            raise ValueError("the balanced set is empty")
        self.data, self.seed, self.weights = data, seed, weights
        frame = data.frame.reset_index(drop=True)
        self.prompt_ids = list(dict.fromkeys(frame["prompt_id"]))
        self.prompt_number = {pid: i for i, pid in enumerate(self.prompt_ids)}
        attrs = list(ATTRIBUTES)
        # units[u] = (prompt number, attribute number, rows [n_groups, m]): row indices of the frame
        self.units: list[tuple[int, int, np.ndarray]] = []
        for (pid, attr), part in frame.groupby(["prompt_id", "attribute"], sort=False):
            per_group = [part.index[part["group"] == g].to_numpy() for g in ATTRIBUTES[attr]]
            m = min(len(rows) for rows in per_group)  # equal after rebalancing; min keeps it safe anyway
            grid = np.stack([rows[:m] for rows in per_group])
            self.units.append((self.prompt_number[pid], attrs.index(attr), grid))
        self.frame = frame
        self.units_per_batch = min(units_per_batch, len(self.units))

    @property
    def n_images(self) -> int:
        return len(self.frame)

    def draw(self, stage: int, step: int) -> Batch:
        """The batch of step `step` of stage `stage` (deterministic in seed, stage and step)."""
        rng = np.random.default_rng([self.seed, stage, step])
        chosen = rng.choice(len(self.units), size=self.units_per_batch, replace=False)
        rows, prompt_index, attribute_index, group_index, unit_rows, weight = [], [], [], [], [], []
        for u in chosen:
            p, a, grid = self.units[int(u)]
            copy = int(rng.integers(grid.shape[1]))
            if self.weights is not None:
                weight += list(self.weights[(self.prompt_ids[p], list(ATTRIBUTES)[a])])
            rows += grid[:, copy].tolist()
            prompt_index += [p] * grid.shape[0]
            attribute_index += [a] * grid.shape[0]
            group_index += list(range(grid.shape[0]))
            unit_rows.append(grid.shape[0])
        return Batch(rows=rows, prompts=self.frame["neutral_prompt"].iloc[rows].tolist(),
                     explicit_prompts=self.frame["prompt"].iloc[rows].tolist(),
                     prompt_ids=self.frame["prompt_id"].iloc[rows].tolist(),
                     images=[self.data.image(r) for r in rows],
                     prompt_index=torch.tensor(prompt_index), attribute_index=torch.tensor(attribute_index),
                     group_index=torch.tensor(group_index), unit_rows=unit_rows,
                     weight=torch.tensor(weight, dtype=torch.float32) if self.weights is not None else None)
