"""Export a pretrained run's ResNet into torchvision's own model and fine-tune it with plain PyTorch.

    selfsup pretrain recipes/simclr_cifar10_fast.yaml --out runs/simclr
    python examples/export_finetune.py runs/simclr --epochs 10

The exported file loads with strict=True into `selfsup.nets.torchvision_resnet(...)`, which is torchvision's
resnet18/resnet50 (with the CIFAR stem when the run used it): from there on nothing of selfsup is needed. The
classifier is fine-tuned on the run's labelled eval source (its train split), and tested on its test split.
"""

import argparse
import json

import torch
import torch.nn.functional as F

import selfsup
from selfsup.augmentation import to_input
from selfsup.config import load_run_config
from selfsup.data import subset
from selfsup.nets import torchvision_resnet


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a pretraining run with a ResNet backbone")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--labels", type=int, help="fine-tune on a seeded random subset of this many images "
                   "(default: the whole train split)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    exported = selfsup.export_backbone(args.run, format="torchvision", force=True)
    cfg = load_run_config(f"{args.run}/config.yaml")
    depth = int(cfg.model.backbone.removeprefix("resnet"))
    model = torchvision_resnet(depth, cifar_stem=cfg.model.cifar_stem)  # torchvision's ResNet, fc = identity
    model.load_state_dict(torch.load(exported["exported"], weights_only=True), strict=True)
    model.eval()
    with torch.no_grad():  # the stock model computes what selfsup's backbone computed: the export is faithful
        probe = to_input(torch.rand(4, cfg.model.input_size, cfg.model.input_size, 3).mul(255).byte())
        gap = (model(probe) - selfsup.load_run(args.run).eval_backbone(probe)).abs().max().item()
    print(f"exported into torchvision's ResNet: features differ from selfsup's by at most {gap:.2e}")

    source, size = cfg.eval.source or cfg.data.source, cfg.model.input_size
    train, test = (selfsup.load_source(source, split, size=cfg.eval.size or cfg.data.size) for split in
                   ("train", "test"))
    if args.labels:
        train = subset(train, args.labels, seed=0)
    classes = int(train.labels.max()) + 1
    with torch.no_grad():
        features = model(torch.zeros(1, 3, size, size)).shape[1]
    model.fc = torch.nn.Linear(features, classes)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x_train, y_train = torch.tensor(train.images, device=device), torch.tensor(train.labels, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    recipe = selfsup.AugmentConfig(size=size, crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0)

    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen, device=device)
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            loss = F.cross_entropy(model(selfsup.augment(x_train[idx], recipe, gen)), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}")

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 512):
            x = to_input(torch.tensor(test.images[start:start + 512], device=device), size)  # resized, normalised
            pred = model(x).argmax(1).cpu()
            correct += (pred == torch.from_numpy(test.labels[start:start + 512])).sum().item()
    result = {"exported": exported["exported"], "load_with": exported["load_with"], "feature_difference": gap,
              "test_top1": round(100 * correct / len(test), 2)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
