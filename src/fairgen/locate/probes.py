"""Linear probes: multinomial logistic regression on standardised features, scored by balanced accuracy.

Used on the vision tokenizer's embeddings (tokenizer_audit.py) and on the language model's hidden state
(lm_audit.py). The probe is deliberately simple (a linear map, an L2 penalty, fit to convergence by
L-BFGS): it asks whether an attribute is *linearly readable* from a representation, as the paper's
Table 3 does, not how well a strong classifier could do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

# L2 penalty on the weights, per feature after standardisation. Fixed rather than tuned: a probe is a
# measurement, and a tuned penalty would make its accuracy depend on the tuning split.
L2 = 1e-3
MAX_ITER = 200


@dataclass
class Probe:
    """A fitted probe. mean, std: (F,) standardisation; weight (F, K), bias (K,)."""

    mean: np.ndarray
    std: np.ndarray
    weight: torch.Tensor
    bias: torch.Tensor

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Features (N, F) -> class probabilities (N, K)."""
        z = torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))
        with torch.no_grad():
            return torch.softmax(z @ self.weight + self.bias, dim=1).numpy()


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = L2) -> Probe:
    """Fit a multinomial logistic regression. x: (N, F) features; y: (N,) class indices in 0..K-1.

    Loss: mean cross-entropy + l2 * ||W||^2 (bias not penalised). Constant features are left unscaled."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    z = torch.from_numpy(((x - mean) / std).astype(np.float32))
    target = torch.from_numpy(np.asarray(y, dtype=np.int64))
    weight = torch.zeros(z.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=MAX_ITER, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, target) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Probe(mean, std, weight.detach(), bias.detach())


def split(y: np.ndarray, test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train / test index split of labels y (N,): each class contributes test_share of its
    items (at least one to each side when it has two or more)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = min(len(idx) - 1, max(1, round(test_share * len(idx)))) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall of each class (K,): the share of its items predicted as it; NaN for a class with no items."""
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        mask = y_true == c
        if mask.any():
            out[c] = float((y_pred[mask] == c).mean())
    return out


def probe_accuracy(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...], test_share: float = 0.3,
                   seed: int = 0) -> dict:
    """Fit on a stratified train split, score on the held-out rest.

    Returns {"n_train", "n_test", "balanced_accuracy", "accuracy": {class: held-out recall}, "chance"}.
    Balanced accuracy is the mean of the per-class recalls (chance = 1/K whatever the class shares)."""
    train, test = split(y, test_share, seed)
    if len(np.unique(y[train])) < 2 or len(test) == 0:
        return {"n_train": len(train), "n_test": len(test), "balanced_accuracy": None,
                "accuracy": {c: None for c in classes}, "chance": 1 / len(classes)}
    probe = fit_probe(x[train], y[train], len(classes))
    pred = probe.predict_proba(x[test]).argmax(axis=1)
    acc = per_class_accuracy(y[test], pred, len(classes))
    return {"n_train": len(train), "n_test": len(test),
            "balanced_accuracy": float(np.nanmean(acc)),
            "accuracy": {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, acc)},
            "chance": 1 / len(classes)}
