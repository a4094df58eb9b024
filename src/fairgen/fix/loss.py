"""The losses of `fairgen fix`: supervised fine-tuning on balanced images, and the balanced preference
loss (BPO) of Liu et al. (arXiv 2502.03429), on mean per-token image log-probabilities.

For a neutral prompt x and images y_1..y_K of the K groups of one attribute (each from an explicit
prompt of that group):
    log p_i = mean per-token log-probability of y_i given x    (model.image_token_logprob)
    o_i     = log p_i - log(1 - p_i)                           (log-odds; computed with expm1, stable)
    L_ij    = log(1 + (sigmoid(o_i - o_j) - 1/2)^2)            (one pair)
    L       = mean of L_ij over the K(K-1)/2 pairs i < j
L is 0 exactly when the model finds every group's image equally likely, and its gradient then vanishes;
otherwise it pushes the likelier group's log-probability down and the other's up.

Pairs are only ever formed between images of the same prompt and the same attribute: every row carries
its prompt index and attribute index, and the pairs are built from them (the reference implementation
compares the two halves of a batch, which pairs images of different prompts when a batch is shuffled).

Toward a target other than uniform (`fairgen fix --target`), each row carries its group's weight
w_g = K * t_g, t the target's shares of the prompt's concept (every weight is 1 under the uniform target,
and the losses are then exactly the ones above):
    SFT     the weighted mean -sum_n w_n log p_n / N: maximum likelihood on a set whose groups count
            as the target says (the set itself holds as many images of every group), whose optimum
            draws group g with probability t_g;
    BPO     only pairs whose groups have equal target shares: L_ij pulls two groups' images to equal
            likelihood, which is the target only when t_i = t_j. There is no calibrated balance point for
            unequal shares (L works on mean per-token log-probabilities, whose gap says little about how
            often each group is drawn), so those pairs leave the loss and the SFT term does the moving.
"""

from __future__ import annotations

import torch

# log p of a mean per-token log-probability is < 0; at exactly 0 (p = 1) the log-odds are infinite.
# Clamping just below 0 keeps them finite; real mean per-token log-probs never come near it.
_MAX_LOGP = -1e-6


def log_odds(logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) from log p (any shape), without forming 1 - p in floating point:
    log(1 - p) = log(-expm1(log p))."""
    logp = logp.clamp(max=_MAX_LOGP)
    return logp - torch.log(-torch.expm1(logp))


def pair_loss(logp_i: torch.Tensor, logp_j: torch.Tensor) -> torch.Tensor:
    """BPO loss of image pairs, elementwise: log(1 + (sigmoid(o_i - o_j) - 1/2)^2). Shapes broadcast."""
    gap = torch.sigmoid(log_odds(logp_i) - log_odds(logp_j)) - 0.5
    return torch.log1p(gap * gap)


def same_prompt_pairs(prompt_index: torch.Tensor, attribute_index: torch.Tensor | None = None,
                      group_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (i, j), i < j, of rows with the same prompt and the same attribute.

    prompt_index, attribute_index, group_index: LongTensor[N]. attribute_index None means one attribute.
    group_index, when given, is checked: two rows of one (prompt, attribute) must show different groups,
    else the batch was built wrongly (a pair would compare a group with itself).
    Returns (i, j), two LongTensor[P] of row indices.
    """
    same = prompt_index[:, None] == prompt_index[None, :]
    if attribute_index is not None:
        same &= attribute_index[:, None] == attribute_index[None, :]
    i, j = torch.triu(same, diagonal=1).nonzero(as_tuple=True)
    if group_index is not None and bool((group_index[i] == group_index[j]).any()):
        raise ValueError("BPO batch holds two images of one group for the same prompt and attribute")
    return i, j


def bpo_loss(logp: torch.Tensor, prompt_index: torch.Tensor, attribute_index: torch.Tensor | None = None,
             group_index: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """BPO over a batch: per (prompt, attribute) set, the mean pair loss over its pairs; then the mean over
    sets (so an attribute with more groups, e.g. race's 6 pairs against gender's 1, weighs the same).

    logp: Tensor[N], mean per-token log-probabilities; the index tensors: LongTensor[N] (see
    same_prompt_pairs); weight: Tensor[N], each row's target weight K * t_g (None: uniform), which keeps
    only the pairs of equal weight (module docstring). A set without a pair does not count. Returns a
    scalar (0 for a batch without any pair)."""
    i, j = same_prompt_pairs(prompt_index, attribute_index, group_index)
    if weight is not None:
        equal = torch.isclose(weight[i], weight[j])
        i, j = i[equal], j[equal]
    if len(i) == 0:
        return logp.sum() * 0.0  # keeps the graph: backward() still works
    losses = pair_loss(logp[i], logp[j])
    # The set of a pair: its first row's (prompt, attribute), numbered 0..S-1.
    key = prompt_index[i] if attribute_index is None else torch.stack([prompt_index[i], attribute_index[i]], 1)
    _, set_of_pair = torch.unique(key, dim=0, return_inverse=True)
    n_sets = int(set_of_pair.max()) + 1
    sums = torch.zeros(n_sets, dtype=losses.dtype, device=losses.device).index_add(0, set_of_pair, losses)
    counts = torch.bincount(set_of_pair, minlength=n_sets).to(losses.dtype)
    return (sums / counts).mean()


def sft_loss(logp: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised loss: the mean negative log-probability per image token over the batch (logp: Tensor[N]),
    each image weighted by its row's target weight (Tensor[N]; None: all 1)."""
    return -logp.mean() if weight is None else -(weight.to(logp.dtype) * logp).mean()


def contrast_loss(gap: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """The explicit contrast term (`fix --contrast`): for row n, gap_n = log p(y_n | e_n) - log p(y'_n | e_n),
    e_n the explicit prompt its image y_n was made from and y'_n another group's image of the same set
    (mean per-token log-probabilities; Tensor[N]); before: the same gaps of the model without the adapter.
    Returns the mean over rows of max(0, before - gap): 0 while every explicit prompt tells its own
    group's image from the other as well as the model did, and the gradient of a row only where that gap
    shrank. An SFT anchor raises the likelihood of every token of the explicit image, most of which do
    not depend on the group; the gap's do."""
    return torch.relu(before - gap).mean()


def combined_loss(logp: torch.Tensor, prompt_index: torch.Tensor, attribute_index: torch.Tensor | None,
                  group_index: torch.Tensor | None, alpha: float, beta: float,
                  weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """alpha * SFT + beta * BPO on one batch (weight: the rows' target weights, None: uniform); returns
    {"loss", "sft", "bpo"} (scalars; "loss" has the graph)."""
    sft = sft_loss(logp, weight)
    bpo = bpo_loss(logp, prompt_index, attribute_index, group_index, weight)
    return {"loss": alpha * sft + beta * bpo, "sft": sft.detach(), "bpo": bpo.detach()}
