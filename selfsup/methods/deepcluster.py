"""DeepCluster (Caron et al. 2018): k-means on the features every epoch, then classify the cluster ids.

Each epoch: features of the un-augmented training images (eval mode) -> PCA-whitened to `pca_dim` and
L2-normalised -> k-means (faiss when installed, else the torch implementation below) -> pseudo-labels.
The classifier is re-initialised after every re-clustering (cluster ids carry no meaning across
clusterings; weights N(0, 0.01), bias 0, as the authors' main.py), and batches sample uniformly over clusters so a
few huge clusters cannot dominate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from selfsup.errors import SelfSupError
from selfsup.methods.base import EpochContext, gather_shards
from selfsup.methods.pseudo_labels import PseudoLabelMethod
from selfsup.methods.registry import register_method
from selfsup.progress import Progress, say


@dataclass
class DeepClusterConfig:
    """DeepCluster: k-means on PCA-whitened, L2-normalised features every epoch."""

    RANGES: ClassVar[dict[str, str]] = {"num_clusters": "[1, inf)", "pca_dim": "[1, inf)", "kmeans_iters": "[1, inf)"}

    num_clusters: int = 100
    pca_dim: int = 256
    kmeans_iters: int = 20
    backend: str = "auto"  # auto (faiss when installed, else torch) | faiss | torch


def pca_whiten(x: torch.Tensor, dim: int, eps: float = 1e-5) -> torch.Tensor:
    """Project centred features on their top `dim` principal components, scaled to unit variance, then L2-normalise."""
    x = x.double()
    x = x - x.mean(0)
    dim = min(dim, x.shape[1], x.shape[0])
    cov = x.T @ x / max(1, x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
    return F.normalize((x @ evecs / torch.sqrt(evals.clamp_min(0) + eps)).float(), dim=1)


def kmeans_torch(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means (Euclidean) on the rows of x; returns (assignments, centroids).

    An empty cluster takes over half of the largest one: its centroid becomes a slightly perturbed copy of
    the largest cluster's centroid, as faiss does, so all k clusters stay in use.
    """
    n = x.shape[0]
    if n < k:
        raise SelfSupError(f"k-means needs at least as many samples ({n}) as clusters ({k}); "
                           "lower deepcluster.num_clusters")
    g = torch.Generator(device=x.device).manual_seed(seed)
    centroids = x[torch.randperm(n, generator=g, device=x.device)[:k]].clone()
    assign = torch.zeros(n, dtype=torch.long, device=x.device)
    bar = Progress(iters, f"k-means ({n:,} x {x.shape[1]} into {k})")
    for _ in range(iters):
        # argmin ||x - c||^2 = argmax (x.c - |c|^2 / 2), computed in chunks to bound memory.
        half_norm = 0.5 * (centroids * centroids).sum(1)
        assign = torch.cat([(x[i:i + 8192] @ centroids.T - half_norm).argmax(1) for i in range(0, n, 8192)])
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None].to(x.dtype)
        for empty in torch.nonzero(~nonempty).flatten().tolist():
            big = int(torch.argmax(counts))
            noise = 1e-4 * torch.randn(x.shape[1], generator=g, device=x.device, dtype=x.dtype)
            centroids[empty] = centroids[big] + noise
            centroids[big] = centroids[big] - noise
            counts[big] //= 2
            counts[empty] = counts[big]
        bar.update()
    bar.close()
    half_norm = 0.5 * (centroids * centroids).sum(1)
    assign = torch.cat([(x[i:i + 8192] @ centroids.T - half_norm).argmax(1) for i in range(0, n, 8192)])
    return assign, centroids


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int, backend: str = "auto") -> torch.Tensor:
    """Cluster assignments of the rows of x: faiss when installed (backend auto/faiss), else kmeans_torch."""
    if backend not in ("auto", "faiss", "torch"):
        raise SelfSupError(f"deepcluster.backend must be auto, faiss or torch, got {backend!r}")
    if backend != "torch":
        try:
            import faiss
        except ImportError:
            if backend == "faiss":
                raise SelfSupError("deepcluster.backend=faiss but faiss is not installed; "
                                   "pip install faiss-cpu") from None
        else:
            data = x.detach().cpu().float().contiguous().numpy()
            km = faiss.Kmeans(data.shape[1], k, niter=iters, seed=seed, verbose=False)
            say(f"k-means with faiss: {len(data):,} x {data.shape[1]} into {k} clusters, {iters} iterations")
            km.train(data)
            _, labels = km.index.search(data, 1)
            return torch.from_numpy(labels[:, 0]).long().to(x.device)
    return kmeans_torch(x, k, iters, seed)[0]


@register_method("deepcluster", config=DeepClusterConfig)
class DeepCluster(PseudoLabelMethod):
    """Backbone + a linear classifier (one head) over the current k-means clusters."""

    cfg: DeepClusterConfig

    def initial_labels(self, data) -> tuple[torch.Tensor, int]:
        """Until the first clustering (at the first epoch's start): round-robin ids."""
        return (torch.arange(data.num_samples) % self.cfg.num_clusters)[None], self.cfg.num_clusters

    @torch.no_grad()
    def recluster(self, images: torch.Tensor, seed: int) -> None:
        """New pseudo-labels from k-means on the whitened features of the whole training set."""
        feats = gather_shards(self.dataset_pass(self.backbone, images, "DeepCluster features"), len(images))
        # Every rank clusters the same gathered features with the same seed, so all agree on the labels.
        self.labels[0] = kmeans(pca_whiten(feats, self.cfg.pca_dim), self.cfg.num_clusters, self.cfg.kmeans_iters,
                                seed, self.cfg.backend)

    @torch.no_grad()
    def reset_heads(self, seed: int) -> None:
        """The classifier's weights drawn anew from N(0, 0.01) by a generator seeded with `seed`, its bias zero (the
        authors' re-initialisation of the top layer after every clustering)."""
        weight = self.heads.weight
        generator = torch.Generator(device=weight.device).manual_seed(seed)
        weight.normal_(0.0, 0.01, generator=generator)
        self.heads.bias.zero_()

    def on_epoch_start(self, ctx: EpochContext) -> None:
        self.recluster(ctx.images, ctx.seed * 1000 + ctx.epoch)
        # Cluster ids are arbitrary after each clustering: start the classifier (and its momentum) afresh, from a
        # generator seeded by the epoch, so every process draws the same new weights. As the authors' main.py:
        # `top_layer.weight.data.normal_(0, 0.01); top_layer.bias.data.zero_()`.
        self.reset_heads(ctx.seed * 1000 + ctx.epoch)
        if ctx.optimizer is not None:
            for p in self.heads.parameters():
                ctx.optimizer.state.pop(p, None)

    def epoch_order(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Indices drawn uniformly over non-empty clusters, then uniformly within the chosen cluster."""
        labels = self.labels[0].cpu()
        order = torch.argsort(labels, stable=True)
        sizes = torch.bincount(labels, minlength=self.cfg.num_clusters)
        starts = torch.cumsum(sizes, 0) - sizes
        nonempty = torch.nonzero(sizes).flatten()
        cluster = nonempty[torch.randint(len(nonempty), (count,), generator=generator)]
        within = (torch.rand(count, generator=generator) * sizes[cluster]).long()
        return order[starts[cluster] + within]


__all__ = ["DeepCluster", "DeepClusterConfig", "kmeans", "kmeans_torch", "pca_whiten"]
