"""Typed run configuration: dataclasses, YAML recipes and `key=value` overrides. Nothing is rescaled silently."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from selfsup.augment import AugmentConfig, single_image_recipe
from selfsup.errors import SelfSupError
from selfsup.exemplar import ExemplarTransformConfig


@dataclass
class DataConfig:
    """What to train on."""

    source: str = "folder:../shared/data/cifar10-jpeg.tar.gz"
    split: str = "train"
    root: str | None = None  # where official datasets live (default: the cache folder)
    size: int | None = None  # resize (shorter side + centre crop) while decoding; None keeps the source size
    samples_per_epoch: int | None = None  # draw this many indices with replacement per epoch (e.g. one image)
    download: bool = False
    labels_file: str | None = None  # method supervised: a CSV from `selfsup labels` instead of the source's labels
    imbalance: str | None = None  # light | heavy: keep 100% of class 0 down to 50% / 10% of the last class
    num_images: int | None = None  # train on a seeded random subset of this many source images (e.g. 1 or 10)
    # Fewer source images than a batch (e.g. one photograph): every batch is made of new images synthesised
    # from them by `single_image` augmentation, and the method draws its own views from those. Methods that keep
    # a label per sample (sela, deepcluster, exemplar, ...) get samples_per_epoch images synthesised once instead.
    synthesize: bool | None = None  # None: on when the source holds fewer images than batch_size
    single_image: AugmentConfig = field(default_factory=single_image_recipe)


@dataclass
class ModelConfig:
    """The backbone."""

    backbone: str = "resnet18"
    cifar_stem: bool = True
    input_size: int = 32
    bn: bool = True
    dropout: float = 0.0  # on the fully connected layer of the Exemplar-CNN nets
    width: float = 1.0  # channel multiplier of alexnet_small (0.5: a quarter of the compute, for CPU studies)


@dataclass
class OptimConfig:
    """Optimizer and schedule: linear warm-up, then cosine to min_lr or steps. lr is used as given (no batch scaling)."""

    name: str = "sgd"  # sgd | lars | adam
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    lr: float = 0.06
    schedule: str = "cosine"  # cosine | step (lr times gamma at each of step_epochs)
    step_epochs: list[float] = field(default_factory=list)
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False  # sgd
    weight_decay: float = 5e-4
    warmup_epochs: float = 10.0
    min_lr: float = 0.0
    exclude_bias_norm: bool = True  # no weight decay (nor LARS adaptation) on biases and norm layers
    lars_eta: float = 0.001


@dataclass
class EvalConfig:
    """kNN monitor and probes: a labelled source with train/test splits."""

    source: str | None = None  # default: the training source when it has labels
    train_split: str = "train"
    test_split: str = "test"
    root: str | None = None
    size: int | None = None  # decode-time resize of the eval source
    knn_k: int = 200
    knn_t: float = 0.1
    knn_every: int = 5  # epochs between kNN monitors (0: only at the end)
    probe_dims: int = 9600  # each tap is average-pooled to about this many dimensions
    probe_epochs: int = 30
    probe_lr: float = 1e-3
    probe_weight_decay: float = 5e-4
    probe_batch_size: int = 256
    batch_size: int = 512  # feature extraction


@dataclass
class SimCLRConfig:
    """SimCLR's projection head and loss."""

    temperature: float = 0.5
    proj_hidden: int = 2048
    proj_dim: int = 128


@dataclass
class SeLaConfig:
    """SeLa: heads, clusters, and the label-optimisation schedule."""

    num_clusters: int = 128
    num_heads: int = 10
    lam: float = 10.0  # the paper uses 25 on ImageNet and 10 in its CIFAR code
    label_steps: int = 20  # label optimisations spread over training, the first at epoch 0
    spacing: str = "linear"  # linear | quadratic (more label steps early)
    sinkhorn_iters: int = 1000
    sinkhorn_tol: float = 1e-3


@dataclass
class DeepClusterConfig:
    """DeepCluster: k-means on PCA-whitened, L2-normalised features every epoch."""

    num_clusters: int = 100
    pca_dim: int = 256
    kmeans_iters: int = 20
    backend: str = "auto"  # auto (faiss when installed, else torch) | faiss | torch


@dataclass
class RotNetConfig:
    """RotNet: how many rotations the classifier tells apart."""

    rotations: int = 4  # 4: 0/90/180/270; 2: 0/180; 8: multiples of 45 degrees


@dataclass
class ColorizationConfig:
    """Colorization: ab bins, class rebalancing and the annealed-mean readout (Zhang et al. 2016)."""

    loss: str = "classification"  # classification over ab bins | regression (L2 on ab)
    bin_size: float = 10.0
    rebalance: float = 0.5  # lambda: mix of the empirical bin prior and uniform
    temperature: float = 0.38  # annealed mean


@dataclass
class InpaintingConfig:
    """Context encoder: which region is missing, and how the loss treats its rim (Pathak et al. 2016)."""

    mask: str = "central"  # central | blocks | regions
    mask_fraction: float = 0.25  # of the image area
    overlap: int = 2  # rim (pixels) inside the region that stays visible but is predicted; the paper: 4 at 128 px
    overlap_weight: float = 10.0
    decoder_width: int = 128
    adversarial: float = 0.0  # weight of the adversarial loss; the paper's joint loss uses 0.001 (and 0.999 on reconstruction)


@dataclass
class BiGANConfig:
    """BiGAN: latent size and the widths of the generator and discriminator."""

    z_dim: int = 128
    generator_width: int = 256
    discriminator_width: int = 64
    stochastic_encoder: bool = False  # E gives a mean and a log-std and z is drawn from them (as ALI does)
    reconstruction: float = 0.0  # weight of ALICE's cycle term ||x - G(E(x))||^2 on E and G (0: the paper's BiGAN)


@dataclass
class ExemplarConfig:
    """Exemplar-CNN: seed patches as surrogate classes, and the transformations (shared by method instance)."""

    num_seeds: int = 8000  # surrogate classes; the paper goes up to 32,000
    patch: int = 32
    image_size: int | None = None  # sources are resized to this before seeds are cut; None: 64, or larger sources as they are
    samples_per_class: int = 100  # transformed copies of every seed per epoch
    transform: ExemplarTransformConfig = field(default_factory=ExemplarTransformConfig)


@dataclass
class InstanceConfig:
    """Instance discrimination: every training image its own class, scored against a memory bank."""

    dim: int = 128  # width of the normalised embedding kept per image
    negatives: int = 4096  # bank entries drawn per step for the sampled softmax
    temperature: float = 0.07
    momentum: float = 0.5  # bank entry <- normalise(momentum * entry + (1 - momentum) * new embedding)


@dataclass
class Config:
    """One run."""

    method: str = "simclr"
    epochs: int = 100
    batch_size: int = 512  # global, across all processes
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    channels_last: str = "auto"  # auto (= true: faster on CPU and CUDA alike) | true | false
    compile: bool = False
    sync_bn: bool = False  # under torchrun on CUDA: batch-norm statistics over the global batch (SyncBatchNorm)
    log_every: int = 20
    max_minutes: float | None = None  # stop cleanly after the epoch that crosses this wall-clock budget
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    sela: SeLaConfig = field(default_factory=SeLaConfig)
    deepcluster: DeepClusterConfig = field(default_factory=DeepClusterConfig)
    exemplar: ExemplarConfig = field(default_factory=ExemplarConfig)
    rotnet: RotNetConfig = field(default_factory=RotNetConfig)
    colorization: ColorizationConfig = field(default_factory=ColorizationConfig)
    inpainting: InpaintingConfig = field(default_factory=InpaintingConfig)
    bigan: BiGANConfig = field(default_factory=BiGANConfig)
    instance: InstanceConfig = field(default_factory=InstanceConfig)


def _coerce(value, tp, where: str):
    """Check/convert a YAML value to the dataclass field's type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SelfSupError:
                continue
        raise SelfSupError(f"{where}: {value!r} is not a valid {tp}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise SelfSupError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], where) for v in value]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(tp)):
            raise SelfSupError(f"{where}: expected a list of {len(typing.get_args(tp))} numbers, got {value!r}")
        return tuple(_coerce(v, t, where) for v, t in zip(value, typing.get_args(tp)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SelfSupError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SelfSupError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise SelfSupError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float, bool)):
            return str(value).lower() if isinstance(value, bool) else str(value)
        raise SelfSupError(f"{where}: expected a string, got {value!r}")
    return value


def _merge(obj, updates: dict, where: str = ""):
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        path = f"{where}{key}"
        if key not in names:
            raise SelfSupError(f"unknown config key {path!r}; valid keys here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise SelfSupError(f"{path} is a section; set its keys, e.g. {path}.{next(iter(f.name for f in dataclasses.fields(current)))}=...")
            _merge(current, value, path + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], path))
    return obj


def parse_overrides(pairs: list[str]) -> dict:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}; values are parsed as YAML."""
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SelfSupError(f"override {pair!r} must look like key=value (e.g. epochs=50 or optim.lr=0.3)")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def apply_overrides(cfg: Config, pairs: list[str]) -> Config:
    """Apply `key=value` overrides to an existing config (e.g. one loaded from a run)."""
    return _merge(cfg, parse_overrides(pairs))


def read_yaml(path: str | Path, what: str = "recipe", example: str = "recipes/simclr_cifar10.yaml") -> dict:
    """A YAML file that must hold a mapping; a missing file or bad YAML is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise SelfSupError(f"{what} {path} does not exist; give a YAML file such as {example}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SelfSupError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SelfSupError(f"{what} {path} must be a mapping of keys")
    return data


def update_config(cfg: Config, updates: dict) -> Config:
    """Merge a nested dict of config keys into cfg (checked and coerced like a recipe)."""
    return _merge(cfg, updates)


def load_config(recipe: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults, then the recipe YAML, then the overrides."""
    cfg = Config()
    if recipe is not None:
        _merge(cfg, read_yaml(recipe, "recipe", "recipes/simclr_cifar10.yaml"))
    if overrides:
        _merge(cfg, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain dict (tuples as lists) for YAML/JSON."""
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return plain(asdict(cfg))


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
