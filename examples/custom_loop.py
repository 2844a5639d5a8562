"""A training loop of your own with selfsup's parts: a torchvision ResNet-18 as the backbone, SimCLR's augmentation,
projection head and NT-Xent loss, your optimizer and your loop; then weighted kNN on the frozen features.

    python examples/custom_loop.py --steps 200 --device cuda

Any uint8 images (N,H,W,3) work: here scikit-learn's digits at 32 px, which ship with it (nothing is downloaded).
"""

import argparse

import torch
import torchvision

import selfsup
from selfsup.heads import ProjectionHead


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    train = selfsup.load_source("digits", "train", size=32)
    test = selfsup.load_source("digits", "test", size=32)
    images = torch.tensor(train.images, device=device)  # uint8 (N,32,32,3), on the device once

    backbone = selfsup.wrap(torchvision.models.resnet18(), input_size=32).to(device)
    head = ProjectionHead(backbone.feature_dim, hidden_dim=512, out_dim=128).to(device)
    recipe = selfsup.simclr_recipe(size=32)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=device).manual_seed(0)

    for step in range(args.steps):
        idx = torch.randint(len(images), (args.batch_size,), generator=gen, device=device)
        batch = images[idx]
        v1, v2 = selfsup.augment(batch, recipe, gen), selfsup.augment(batch, recipe, gen)  # normalised (B,3,32,32)
        z = head(backbone(torch.cat([v1, v2])))
        loss = selfsup.nt_xent(*z.chunk(2), temperature=0.2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step + 1}/{args.steps}: loss {loss.item():.4f}")

    backbone.eval()
    top1 = selfsup.knn(backbone, train, test, k=20, input_size=32)
    print(f"kNN top-1 on digits after {args.steps} steps: {top1:.1f}%")
    return top1


if __name__ == "__main__":
    main()
