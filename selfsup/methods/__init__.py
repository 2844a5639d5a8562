"""Every method, one file each, registered by name (registry.py); base.py is the contract they share.

Each module of this package is imported here, so a method registers by being a file in it: adding one touches no
other file. The names below are re-exported for convenience (selfsup.SimCLR, ...).
"""

import importlib
import pkgutil

from selfsup.methods.base import Batch, DataInfo, EpochContext, Method, NoConfig, RunInfo, Tape
from selfsup.methods.registry import METHODS, build_method, find_method, get_method, register_method

for _module in pkgutil.iter_modules(__path__):  # in name order: that is the order of METHODS
    importlib.import_module(f"{__name__}.{_module.name}")

from selfsup.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig  # noqa: E402
from selfsup.methods.bigan import BiGAN, BiGANConfig  # noqa: E402
from selfsup.methods.byol import BYOL, BYOLConfig  # noqa: E402
from selfsup.methods.colorization import Colorization, ColorizationConfig  # noqa: E402
from selfsup.methods.deepcluster import DeepCluster, DeepClusterConfig  # noqa: E402
from selfsup.methods.dino import DINO, DINOConfig  # noqa: E402
from selfsup.methods.exemplar import Exemplar, ExemplarConfig  # noqa: E402
from selfsup.methods.inpainting import ContextEncoder, InpaintingConfig  # noqa: E402
from selfsup.methods.instance import InstanceConfig, InstanceDiscrimination  # noqa: E402
from selfsup.methods.moco import MoCo, MoCoConfig  # noqa: E402
from selfsup.methods.mocov3 import MoCoV3, MoCoV3Config  # noqa: E402
from selfsup.methods.pseudo_labels import PseudoLabelMethod  # noqa: E402
from selfsup.methods.rotnet import RotNet, RotNetConfig  # noqa: E402
from selfsup.methods.sela import SeLa, SeLaConfig  # noqa: E402
from selfsup.methods.simclr import SimCLR, SimCLRConfig  # noqa: E402
from selfsup.methods.simsiam import SimSiam, SimSiamConfig  # noqa: E402
from selfsup.methods.supervised import Supervised, SupervisedConfig  # noqa: E402
from selfsup.methods.swav import SwAV, SwAVConfig  # noqa: E402
from selfsup.methods.vicreg import VICReg, VICRegConfig  # noqa: E402

__all__ = ["METHODS", "register_method", "build_method", "find_method", "get_method", "Method", "Batch", "DataInfo",
           "EpochContext", "RunInfo", "NoConfig", "Tape", "PseudoLabelMethod", "SimCLR", "SimCLRConfig", "SeLa",
           "SeLaConfig", "DeepCluster", "DeepClusterConfig", "Supervised", "SupervisedConfig", "Exemplar",
           "ExemplarConfig", "InstanceDiscrimination", "InstanceConfig", "RotNet", "RotNetConfig", "Colorization",
           "ColorizationConfig", "ContextEncoder", "InpaintingConfig", "BiGAN", "BiGANConfig", "SwAV", "SwAVConfig",
           "DINO", "DINOConfig", "MoCo", "MoCoConfig", "MoCoV3", "MoCoV3Config", "BYOL", "BYOLConfig", "SimSiam",
           "SimSiamConfig", "BarlowTwins", "BarlowTwinsConfig", "VICReg", "VICRegConfig"]
