"""Every method, one file each, registered by name (see registry.py); base.py is the contract they share."""

from selfsup.methods.registry import METHODS, build_method, find_method, get_method, register_method  # noqa: I001
from selfsup.methods.base import Batch, DataInfo, EpochContext, Method, NoConfig, RunInfo, Tape
from selfsup.methods.pseudo_labels import PseudoLabelMethod
from selfsup.methods.simclr import SimCLR, SimCLRConfig
from selfsup.methods.sela import SeLa, SeLaConfig
from selfsup.methods.deepcluster import DeepCluster, DeepClusterConfig
from selfsup.methods.supervised import Supervised, SupervisedConfig
from selfsup.methods.exemplar import Exemplar, ExemplarConfig
from selfsup.methods.instance import InstanceConfig, InstanceDiscrimination
from selfsup.methods.rotnet import RotNet, RotNetConfig
from selfsup.methods.colorization import Colorization, ColorizationConfig
from selfsup.methods.inpainting import ContextEncoder, InpaintingConfig
from selfsup.methods.bigan import BiGAN, BiGANConfig

__all__ = ["METHODS", "register_method", "build_method", "find_method", "get_method", "Method", "Batch", "DataInfo",
           "EpochContext", "RunInfo", "NoConfig", "Tape", "PseudoLabelMethod", "SimCLR", "SimCLRConfig", "SeLa",
           "SeLaConfig", "DeepCluster", "DeepClusterConfig", "Supervised", "SupervisedConfig", "Exemplar",
           "ExemplarConfig", "InstanceDiscrimination", "InstanceConfig", "RotNet", "RotNetConfig", "Colorization",
           "ColorizationConfig", "ContextEncoder", "InpaintingConfig", "BiGAN", "BiGANConfig"]
