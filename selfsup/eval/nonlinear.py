"""Non-linear classifiers on a frozen layer: RotNet's CIFAR protocols (Gidaris et al. 2018, Tables 1-3).

mlp   three fully connected layers on the flattened map; the two hidden ones are min(20 x classes, 2048) wide
      (200 for CIFAR-10) with batch norm and ReLU. The paper's "non-linear classifier": 89.06 on block 2 of its
      RotNet NIN.
conv  a NIN block on the map (192c3-192c1-192c1, each conv with batch norm and ReLU), global average pooling and
      a linear layer. The paper's "conv classifier": 91.16 on the RotNet's block 2, 72.50 on a random network's.

Both train as in the paper's code: the backbone frozen in eval mode; every image zero-padded by 4 pixels (an
eighth of the side), cropped back at a random offset and flipped; SGD with Nesterov momentum 0.9, weight decay
5e-4, batch 128, lr 0.1 times 0.2 at 40/80/90% (mlp, 50 epochs) or 35/70/85% (conv, 100 epochs) of training.
Heads on several layers share each batch's one pass through the backbone.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np
import torch
import torch.nn as nn

from selfsup.augmentation import normalize, pad_crop_flip, resize, to_input
from selfsup.data.stream import gather_batches, placed
from selfsup.errors import SelfSupError
from selfsup.eval.classifier import heads_step
from selfsup.eval.features import Transform, _batches
from selfsup.nets import Backbone, eval_mode
from selfsup.progress import Progress

HEADS = {"mlp": dict(epochs=50, milestones=(0.4, 0.8, 0.9)), "conv": dict(epochs=100, milestones=(0.35, 0.7, 0.85))}
BATCH_SIZE = 128
LR = 0.1
LR_DROP = 0.2


def _conv_bn_relu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def build_head(kind: str, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The classifier `kind` (mlp | conv) for a layer whose activations have `shape` (C,H,W) or (D,)."""
    if kind == "mlp":
        hidden = min(20 * num_classes, 2048)
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), hidden, bias=False), nn.BatchNorm1d(hidden),
                             nn.ReLU(inplace=True), nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden),
                             nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
    if kind == "conv":
        if len(shape) != 3:
            raise SelfSupError(f"the conv classifier needs a spatial map (C,H,W), got a layer of shape {tuple(shape)}")
        return nn.Sequential(*_conv_bn_relu(shape[0], 192, 3), *_conv_bn_relu(192, 192, 1), *_conv_bn_relu(192, 192, 1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(192, num_classes))
    raise SelfSupError(f"unknown classifier {kind!r}; choose one of {', '.join(HEADS)}")


def train_heads(backbone: Backbone, layers: list[str], kind: str, train_images: np.ndarray, train_labels: np.ndarray,
                test_images: np.ndarray, test_labels: np.ndarray, size: int, device: torch.device,
                epochs: int | None = None, seed: int = 0, progress: bool = True,
                transform: Transform = normalize, budget_gb: float | None = None) -> dict[str, float]:
    """Top-1 test accuracy (percent) of a `kind` classifier trained on each frozen layer in `layers`
    (`transform`: RGB in [0,1] -> the backbone's input, a method's input_transform). The training images stay on
    the device when they fit `budget_gb` (data.device_budget_gb), else are streamed from the cache."""
    if kind not in HEADS:
        raise SelfSupError(f"unknown classifier {kind!r}; choose one of {', '.join(HEADS)}")
    epochs = HEADS[kind]["epochs"] if epochs is None else epochs
    if epochs < 1:
        raise SelfSupError(f"epochs must be >= 1, got {epochs}")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    shapes = backbone.tap_shapes(size, layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the heads' start must not depend on whatever ran before
        heads = nn.ModuleDict({n: build_head(kind, tuple(s), num_classes) for n, s in shapes.items()}).to(device)
    opt = torch.optim.SGD(heads.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    rows = torch.from_numpy(np.flatnonzero(train_labels >= 0))  # the labelled images, by row of the split
    images = placed(train_images, device, budget_gb)  # on the device when it fits, else streamed batch by batch
    labels = torch.from_numpy(train_labels[rows.numpy()]).long().to(device)
    n = len(labels)
    if n < 2:
        raise SelfSupError(f"the training split has {n} labelled image(s); a classifier needs at least 2")
    steps = math.ceil(n / BATCH_SIZE)
    drops = [round(f * epochs * steps) for f in HEADS[kind]["milestones"]]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: LR_DROP ** bisect_right(drops, s))
    gen = torch.Generator(device=device).manual_seed(seed)
    pad = max(1, images.shape[1] // 8)
    rows_dev = rows.to(device)
    heads.train()
    bar = Progress(epochs, f"{kind} classifiers", unit="epochs", enabled=progress)
    with eval_mode(backbone), bar:  # frozen, batch-norm statistics included
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen, device=device)
            # A last batch of one is left out: batch norm cannot train on a single sample.
            batches = [order[s:s + BATCH_SIZE] for s in range(0, n, BATCH_SIZE) if n - s >= 2]
            for idx, batch in zip(batches, gather_batches(images, [rows_dev[i] for i in batches])):
                x = transform(resize(pad_crop_flip(batch, pad, gen), size))
                loss = heads_step(lambda v: backbone.forward_taps(v, layers), heads, x, labels[idx], opt, sched)
            bar.set(loss=f"{loss / len(layers):.3f}")
            bar.update()
        return _accuracy(backbone, heads, layers, test_images, test_labels, size, device, transform)


@torch.no_grad()
def _accuracy(backbone: Backbone, heads: nn.ModuleDict, layers: list[str], images: np.ndarray, labels: np.ndarray,
              size: int, device: torch.device, transform: Transform) -> dict[str, float]:
    heads.eval()
    correct = dict.fromkeys(layers, 0)
    for start, x in zip(range(0, len(images), 512), _batches(images, 512, device)):
        y = torch.from_numpy(labels[start:start + 512]).long().to(device)
        for name, m in backbone.forward_taps(to_input(x, size, transform), layers).items():
            correct[name] += (heads[name](m.float()).argmax(1) == y).sum().item()
    return {name: 100.0 * c / len(labels) for name, c in correct.items()}
