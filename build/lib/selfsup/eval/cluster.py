"""Clustering quality against ground truth: NMI, adjusted Rand index, and accuracy after Hungarian matching."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def hungarian_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Percent correct after the one-to-one cluster->class matching that maximises agreement.

    With more clusters than classes, clusters left unmatched count as wrong (the strict reading).
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    p_ids, p = np.unique(pred, return_inverse=True)
    t_ids, t = np.unique(truth, return_inverse=True)
    counts = np.zeros((len(p_ids), len(t_ids)), dtype=np.int64)
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(100.0 * counts[rows, cols].sum() / len(pred))


def purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Percent correct when every cluster is mapped to its majority class (many-to-one; the fair reading when K > C)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    counts = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(counts, (p, t), 1)
    return float(100.0 * counts.max(1).sum() / len(pred))


def cluster_metrics(pred, truth) -> dict[str, float]:
    """NMI, ARI, Hungarian accuracy and purity (both percent) of cluster ids against class labels."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"cluster ids and labels differ in length: {pred.shape} vs {truth.shape}")
    return {"nmi": float(normalized_mutual_info_score(truth, pred)), "ari": float(adjusted_rand_score(truth, pred)),
            "hungarian_acc": hungarian_accuracy(pred, truth), "purity": purity(pred, truth)}
