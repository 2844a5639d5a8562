"""`selfsup export`: a run's backbone as weights other code loads without selfsup.

Formats:
    safetensors  the backbone's state_dict as .safetensors (ResNets and ViTs under torchvision's key names, any other
                 selfsup backbone under its own; a module wrapped for selfsup.fit under the module's own names, given
                 the method again: export_backbone(RUN, method=...)).
    torchvision  a ResNet as a torch.save'd state_dict that loads with strict=True into the stock model built by
                 selfsup.nets.torchvision_resnet(depth, cifar_stem) (torchvision's resnet with fc = Identity and,
                 for the CIFAR stem, conv1 3x3 stride 1 and no max-pool), and gives the same features; a ViT likewise
                 into selfsup.nets.torchvision_vit(name, input_size, patch_size) (heads = Identity).
    timm         the same weights as .safetensors for timm's ResNet (selfsup.nets.timm_resnet(depth, cifar_stem):
                 timm.create_model("resnet18", num_classes=0) with the same stem), strict=True and the same features.
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.errors import SelfSupError
from selfsup.nets import VITS, ResNet, ViT, Wrapped

FORMATS = ("safetensors", "torchvision", "timm")
SUFFIX = {"safetensors": "backbone.safetensors", "torchvision": "backbone_torchvision.pth",
          "timm": "backbone_timm.safetensors"}


def backbone_state(backbone) -> dict[str, torch.Tensor]:
    """The backbone's weights under the names its stock counterpart uses (see the module docstring)."""
    if isinstance(backbone, ResNet):
        return backbone.torchvision_state_dict()
    if isinstance(backbone, Wrapped):
        return backbone.module.state_dict()
    return backbone.state_dict()


def export_backbone(run: str | Path, output: str | Path | None = None, format: str = "safetensors",
                    force: bool = False, method=None) -> dict:
    """Write run's backbone in `format` to `output` (default RUN/backbone*.safetensors|.pth); returns a summary with
    the Python line that builds the model it loads into. `method`: for a run a config cannot rebuild (see load_run)."""
    from safetensors.torch import save_file

    from selfsup.engine import load_run

    if format not in FORMATS:
        raise SelfSupError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    method = load_run(run, method=method)
    backbone, model = method.eval_backbone, method.run_config.model
    out = Path(output) if output else Path(run) / SUFFIX[format]
    if out.exists() and not force:
        raise SelfSupError(f"{out} already exists; pass --force to overwrite it")
    resnet = isinstance(backbone, ResNet) and model.backbone in ("resnet18", "resnet50")
    vit = isinstance(backbone, ViT) and model.backbone in VITS  # its own state_dict has torchvision's names
    if format == "timm" and not resnet or format == "torchvision" and not (resnet or vit):
        kinds = "ResNet and ViT" if format == "torchvision" else "ResNet"
        raise SelfSupError(f"--format {format} is for {kinds} backbones (this run's is {model.backbone}); "
                           "use --format safetensors")
    state = {k: v.contiguous() for k, v in backbone_state(backbone).items()}
    tmp = out.with_name(out.name + ".tmp")
    if format == "torchvision":
        torch.save(state, tmp)
    else:
        meta = {"backbone": model.backbone, "cifar_stem": str(model.cifar_stem).lower(),
                "input_size": str(model.input_size), "input": method.input_description}
        if vit:
            meta["patch_size"] = str(backbone.patch_size)
        save_file(state, str(tmp), metadata=meta)
    tmp.replace(out)
    result = {"exported": str(out), "format": format, "tensors": len(state), "input": method.input_description}
    if resnet:
        depth, stem = model.backbone[len("resnet"):], model.cifar_stem
        build = "timm_resnet" if format == "timm" else "torchvision_resnet"
        read = "torch.load" if format == "torchvision" else "safetensors.torch.load_file"
        result["load_with"] = (f"selfsup.nets.{build}({depth}, cifar_stem={stem}).load_state_dict({read}('{out}'), "
                               "strict=True)")
    if vit:
        read = "torch.load" if format == "torchvision" else "safetensors.torch.load_file"
        result["load_with"] = (f"selfsup.nets.torchvision_vit({model.backbone!r}, {model.input_size}, "
                               f"{backbone.patch_size}).load_state_dict({read}('{out}'), strict=True)")
    return result


__all__ = ["export_backbone", "backbone_state", "FORMATS"]
