"""Exemplar-CNN's evaluation protocol (Dosovitskiy et al. 2014, Sec. 4.1).

The net is applied to whole images (CIFAR upsampled to 64x64), the response map of every conv layer is
max-pooled over the four image quadrants, and the pooled maps of all conv layers are concatenated into one
vector (4 x the sum of the conv widths: 512 numbers for 64c5-64c5-128f). A linear classifier is trained on
it: by default the project's linear probe (softmax regression on standardised features, AdamW), or, as in
the paper, a linear SVM (scikit-learn's LinearSVC on standardised features, C chosen on a held-out 10% of
the training split, then refitted on all of it). The SVM is the slower choice by far on a CPU: on the
50,000 CIFAR-10 training images it had not finished after 14 minutes on 2 cores (feature extraction
included). On STL-10 the classifier is trained on each of the ten predefined 1,000-image folds and tested
on the test split, and the result is the mean and standard deviation over folds.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.augmentation import normalize, to_input
from selfsup.errors import SelfSupError
from selfsup.eval.features import Transform, _batches
from selfsup.eval.linear import train_linear_probes
from selfsup.nets import Backbone, eval_mode

SVM_C = (0.001, 0.01, 0.1, 1.0)


def conv_taps(backbone: Backbone, size: int) -> dict[str, torch.Size]:
    """The conv taps (spatial maps) for `size`-pixel inputs and their shapes; fully connected stages are left out,
    as their input size is fixed by the training size."""
    names = [n for n in backbone.taps if n.startswith(("conv", "layer", "block"))]
    shapes = {n: s for n, s in backbone.tap_shapes(size, names).items() if len(s) == 3} if names else {}
    if not shapes:
        raise SelfSupError("this backbone has no conv taps for quadrant pooling")
    return shapes


def quadrant_dim(backbone: Backbone, size: int = 64) -> int:
    """Length of the quadrant-pooled feature vector: 4 x the summed width of the conv taps."""
    return sum(4 * shape[0] for shape in conv_taps(backbone, size).values())


@torch.no_grad()
def quadrant_features(backbone: Backbone, images, size: int, device: torch.device, batch_size: int = 256,
                      transform: Transform = normalize) -> torch.Tensor:
    """(N, quadrant_dim) float32 features of uint8 images (N,H,W,3), resized to `size`."""
    taps = list(conv_taps(backbone, size))
    out = []
    with eval_mode(backbone):
        for x in _batches(images, batch_size, device):
            maps = backbone.forward_taps(to_input(x, size, transform), taps)
            out.append(torch.cat([F.adaptive_max_pool2d(m.float(), 2).flatten(1) for m in maps.values()], 1).cpu())
    return torch.cat(out)


def linear_svm(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
               cs: tuple[float, ...] = SVM_C, seed: int = 0) -> tuple[float, float]:
    """Test top-1 (percent) of a linear SVM on standardised features, and the C picked on a 10% holdout."""
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    def fit(x, y, c):
        return make_pipeline(StandardScaler(), LinearSVC(C=c, dual=False, max_iter=2000)).fit(x, y)

    best = cs[0]
    if len(cs) > 1:
        fit_x, hold_x, fit_y, hold_y = train_test_split(train_x, train_y, test_size=0.1, random_state=seed,
                                                        stratify=train_y)
        scores = [fit(fit_x, fit_y, c).score(hold_x, hold_y) for c in cs]
        best = cs[int(np.argmax(scores))]
    return 100.0 * fit(train_x, train_y, best).score(test_x, test_y), best


def classify(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray, classifier: str,
             num_classes: int, device: torch.device, probe_epochs: int = 30, seed: int = 0) -> float:
    """Test top-1 (percent) of the chosen linear classifier (svm | probe) on quadrant features."""
    if classifier == "svm":
        return linear_svm(train_x.numpy(), train_y, test_x.numpy(), test_y, seed=seed)[0]
    if classifier == "probe":
        return train_linear_probes({"q": train_x}, torch.from_numpy(train_y), {"q": test_x}, torch.from_numpy(test_y),
                                   num_classes, epochs=probe_epochs, device=device, seed=seed)["q"]
    raise SelfSupError(f"classifier must be svm or probe, got {classifier!r}")


def run_quadrant(backbone: Backbone, train, test, device: torch.device, size: int = 64, classifier: str = "probe",
                 folds: list[np.ndarray] | None = None, batch_size: int = 256, probe_epochs: int = 30,
                 seed: int = 0, transform: Transform = normalize) -> dict:
    """The protocol on labelled (train, test) ImageArrays; with folds, one classifier per fold of the train split."""
    train_x = quadrant_features(backbone, train.images, size, device, batch_size, transform)
    test_x = quadrant_features(backbone, test.images, size, device, batch_size, transform)
    num_classes = max(train.num_classes, int(train.labels.max()) + 1)
    result = {"classifier": classifier, "size": size, "dims": train_x.shape[1]}
    labelled = np.flatnonzero(train.labels >= 0)  # unlabelled or held-out rows (-1) train no classifier
    if not folds:
        result["quadrant_top1"] = round(classify(train_x[labelled], train.labels[labelled], test_x, test.labels,
                                                 classifier, num_classes, device, probe_epochs, seed), 2)
        return result
    folds = [np.intersect1d(f, labelled) for f in folds]
    accs = [classify(train_x[f], train.labels[f], test_x, test.labels, classifier, num_classes, device,
                     probe_epochs, seed)
            for f in folds]
    result.update(quadrant_top1=round(float(np.mean(accs)), 2), std=round(float(np.std(accs)), 2),
                  folds=[round(a, 2) for a in accs])
    return result


__all__ = ["run_quadrant", "conv_taps", "quadrant_dim", "quadrant_features", "linear_svm", "classify", "SVM_C"]
