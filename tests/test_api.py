"""The Python API: fit on in-memory images with a foreign backbone, the README's example, the version, wrap, export
round trips into torchvision and timm, the config command, and imports that leave matplotlib alone."""

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from safetensors.torch import load_file

import selfsup
from selfsup.cli import main
from selfsup.engine import load_checkpoint
from selfsup.errors import SelfSupError, SelfSupWarning

README = Path(__file__).parents[1] / "README.md"


def _digits_nchw(size=16) -> torch.Tensor:
    return torch.tensor(selfsup.load_source("digits", "train", size=size).images).permute(0, 3, 1, 2).contiguous()


def _simclr_on_torchvision_resnet() -> selfsup.SimCLR:
    torch.manual_seed(0)
    backbone = selfsup.wrap(torchvision.models.resnet18(num_classes=10), input_size=16)
    return selfsup.SimCLR(backbone, selfsup.SimCLRConfig(proj_hidden=32, proj_dim=16),
                          augment=selfsup.AugmentConfig(size=16, crop_scale=(0.3, 1.0)),
                          data=selfsup.DataInfo(input_size=16))


FIT = {"epochs": 2, "batch_size": 32, "seed": 1, "log_every": 2, "data": {"samples_per_epoch": 96},
       "optim": {"lr": 0.05, "warmup_epochs": 0}}


def test_fit_on_in_memory_images_with_a_torchvision_model_resumes_exactly(tmp_path):
    images = _digits_nchw()  # (N,3,H,W) uint8: the channels-first layout is accepted too
    cfg = selfsup.load_config(overrides=FIT)
    straight = selfsup.fit(_simclr_on_torchvision_resnet(), images, cfg, tmp_path / "straight", progress=False)
    assert isinstance(straight.backbone, selfsup.nets.ResNet)  # the torchvision model's own modules, tapped
    saved = yaml.safe_load((tmp_path / "straight" / "config.yaml").read_text())
    assert saved["data"]["source"] == "memory" and saved["model"]["backbone"] == "custom" and saved["epochs"] == 2
    assert cfg.data.source != "memory"  # the caller's config is not modified

    split_cfg = selfsup.load_config(overrides={**FIT, "max_minutes": 0})
    selfsup.fit(_simclr_on_torchvision_resnet(), images, split_cfg, tmp_path / "split", progress=False)
    assert load_checkpoint(tmp_path / "split")["epoch"] == 1
    resumed = selfsup.fit(_simclr_on_torchvision_resnet(), images, cfg, tmp_path / "split", resume=True, progress=False)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    with pytest.raises(SelfSupError, match="custom|fit"):  # a config cannot rebuild a module given to fit
        selfsup.load_run(tmp_path / "straight")
    again = selfsup.load_run(tmp_path / "straight", method=_simclr_on_torchvision_resnet())
    assert torch.equal(again.head[0].weight, straight.head[0].weight)
    with pytest.raises(SelfSupError, match="uint8"):
        selfsup.fit(_simclr_on_torchvision_resnet(), images.float() / 255, cfg)


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    assert (tmp_path / "runs" / "api" / "checkpoint.pt").is_file()
    assert 0 <= namespace["top1"] <= 100


def test_version_is_one_number_everywhere():
    assert selfsup.__version__ == version("selfsup")
    out = subprocess.run([sys.executable, "-m", "selfsup", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"selfsup {selfsup.__version__}"


def test_importing_every_module_and_plotting_leave_matplotlib_backend_alone(tmp_path):
    script = f"""
import importlib, pkgutil, sys
import matplotlib
matplotlib.use("svg")
import selfsup
for info in pkgutil.walk_packages(selfsup.__path__, "selfsup."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
for name in selfsup.__all__:
    getattr(selfsup, name)
from selfsup.report import write_probe_report
write_probe_report({str(tmp_path)!r}, {{"a": {{"conv1": 50.0, "conv2": 60.0}}}}, "t")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert (tmp_path / "probes.png").stat().st_size > 1000


def test_wrap_finds_the_classifier_and_feature_size_of_foreign_models():
    mobilenet = selfsup.wrap(torchvision.models.mobilenet_v3_small(num_classes=7), input_size=32, taps=["features.3"])
    assert mobilenet.feature_dim == 1024 and mobilenet.taps == ["features.3", "features"]
    out = mobilenet.eval().forward_taps(torch.randn(2, 3, 32, 32))
    assert out["features"].shape == (2, 1024) and out["features.3"].shape[:2] == (2, 24)
    timm = pytest.importorskip("timm")
    vit = selfsup.wrap(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=5), 32)
    assert vit.feature_dim == 192 and vit(torch.randn(2, 3, 32, 32)).shape == (2, 192)
    with pytest.raises(SelfSupError, match="no submodule"):
        selfsup.wrap(torchvision.models.mobilenet_v3_small(), 32, taps=["nope"])


def _resnet_run(tmp_path: Path, cifar_stem: bool) -> Path:
    cfg = selfsup.load_config(overrides={
        "epochs": 1, "batch_size": 32, "data": {"source": "digits", "size": 16, "samples_per_epoch": 32},
        "model": {"backbone": "resnet18", "cifar_stem": cifar_stem, "input_size": 16}, "augment": {"size": 16},
        "optim": {"warmup_epochs": 0}, "eval": {"knn_every": 0, "source": None},
        "simclr": {"proj_hidden": 32, "proj_dim": 8}})
    run = tmp_path / f"run{int(cifar_stem)}"
    selfsup.pretrain(cfg, run, progress=False)
    return run


@pytest.mark.parametrize("cifar_stem", [True, False], ids=["cifar_stem", "imagenet_stem"])
def test_export_loads_strictly_into_torchvision_and_timm_with_equal_features(tmp_path, cifar_stem, capsys):
    run = _resnet_run(tmp_path, cifar_stem)
    ours = selfsup.load_run(run).backbone
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = ours(x)

    assert main(["export", str(run), "--format", "torchvision"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert f"torchvision_resnet(18, cifar_stem={cifar_stem})" in summary["load_with"]
    tv = selfsup.torchvision_resnet(18, cifar_stem=cifar_stem)
    tv.load_state_dict(torch.load(run / "backbone_torchvision.pth", weights_only=True), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(x), expected)

    assert main(["export", str(run)]) == 0  # safetensors, torchvision key names
    plain = torchvision.models.resnet18()
    if cifar_stem:
        plain.conv1, plain.maxpool = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.Identity()
    plain.fc = torch.nn.Identity()
    plain.load_state_dict(load_file(run / "backbone.safetensors"), strict=True)

    timm = pytest.importorskip("timm")
    assert main(["export", str(run), "--format", "timm"]) == 0
    net = selfsup.timm_resnet(18, cifar_stem=cifar_stem)
    net.load_state_dict(load_file(run / "backbone_timm.safetensors"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), expected)
    assert isinstance(net, timm.models.ResNet)
    assert main(["export", str(run), "--format", "timm"]) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err


def test_export_of_a_non_resnet_to_torchvision_is_a_one_line_error(tmp_path, capsys):
    from test_train import tiny_config

    selfsup.pretrain(tiny_config(epochs=1, optim={"warmup_epochs": 0}, eval={"knn_every": 0}), tmp_path / "run",
                     progress=False)
    assert main(["export", str(tmp_path / "run"), "--format", "torchvision"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ResNet and ViT backbones" in err and "exemplar_small" in err and len(err.splitlines()) == 1


def test_config_show_and_keys(capsys):
    recipe = str(Path(__file__).parents[1] / "recipes" / "simclr_cifar10_fast.yaml")
    assert main(["config", "show", recipe, "optim.lr=0.3", "simclr.temperature=0.2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"]["lr"] == 0.3 and shown["simclr"]["temperature"] == 0.2 and "sela" not in shown
    assert main(["config", "keys"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["optim.lr"] == ["float", "0.06"] and rows["sela.num_clusters"] == ["int", "128"]
    assert rows["data.single_image.crop_scale"][0].startswith("tuple") and "exemplar.transform.rotation" in rows
    assert main(["config", "keys", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_a_run_that_only_warms_up_is_warned_about(tmp_path):
    from test_train import tiny_config

    with pytest.warns(SelfSupWarning, match="warmup_epochs"):
        selfsup.pretrain(tiny_config(epochs=1, eval={"knn_every": 0}), tmp_path / "run", progress=False)


def test_imports_key_registers_a_method_from_a_file(tmp_path):
    module = tmp_path / "plugin_method_for_test.py"
    module.write_text("from dataclasses import dataclass\n"
                      "import selfsup\n\n"
                      "@dataclass\n"
                      "class C:\n"
                      "    scale: float = 1.0\n\n"
                      "@selfsup.register_method('plugin_for_test', config=C)\n"
                      "class P(selfsup.Method):\n"
                      "    def training_step(self, batch):\n"
                      "        return {'loss': self.backbone(self.view(batch)).mean()}\n")
    try:
        cfg = selfsup.load_config(overrides={"imports": [str(module)], "method": "plugin_for_test",
                                             "plugin_for_test": {"scale": 2}})
        assert cfg.section().scale == 2.0 and selfsup.config.config_to_dict(cfg)["imports"] == [str(module)]
    finally:  # the registry is process-wide: later tests (test_ddp runs every registered method) must not see it
        selfsup.METHODS.pop("plugin_for_test", None)
        sys.modules.pop("plugin_method_for_test", None)
    with pytest.raises(SelfSupError, match="cannot import 'no_such_module_xyz'"):
        selfsup.load_config(overrides={"imports": ["no_such_module_xyz"]})
    clash = tmp_path / "sub" / "yaml.py"  # the name of a module already imported from elsewhere
    clash.parent.mkdir()
    clash.write_text("")
    with pytest.raises(SelfSupError, match="already imported"):
        selfsup.load_config(overrides={"imports": [str(clash)]})


def test_a_config_saved_by_the_previous_version_still_loads():
    old = selfsup.config.config_to_dict(selfsup.load_config(overrides={"method": "supervised"}))
    old["data"]["labels_file"] = "labels.csv"  # where it lived, beside every method's section
    for name in ("simclr", "sela", "exemplar", "instance"):
        old[name] = selfsup.config.config_to_dict(selfsup.load_config(overrides={"method": name}))[name]
    old.pop("imports")
    cfg = selfsup.config.load_run_config(old)
    assert cfg.method == "supervised" and cfg.supervised.labels_file == "labels.csv"
    assert set(selfsup.config.config_to_dict(cfg)) & {"simclr", "sela", "exemplar", "instance"} == set()


def test_fit_needs_uint8_images_of_a_known_layout():
    from selfsup.engine import as_image_array

    assert as_image_array(np.zeros((2, 3, 5, 7), np.uint8)).images.shape == (2, 5, 7, 3)
    for bad, message in [(np.zeros((2, 5, 7), np.uint8), "shape"), (np.zeros((2, 4, 5, 5), np.uint8), "shape"),
                         ([1, 2], "list")]:
        with pytest.raises(SelfSupError, match=message):
            as_image_array(bad)


def test_augment_takes_either_layout_checks_its_input_and_never_modifies_it():
    cfg = selfsup.simclr_recipe(size=12)
    nhwc = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    nchw = nhwc.permute(0, 3, 1, 2).contiguous()
    unit = nchw.float() / 255
    before = unit.clone()
    out = [selfsup.augment(x, cfg, torch.Generator().manual_seed(7)) for x in (nhwc, nchw, unit)]
    assert out[0].shape == (4, 3, 12, 12)
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=0)
    torch.testing.assert_close(out[2], out[0], rtol=0, atol=1e-5)
    assert torch.equal(unit, before)  # the caller's floats are not divided in place
    for bad, message in [(nhwc.float(), r"\(N,3,H,W\)"), (unit * 255, r"\[0,1\]"), (nhwc[0], "batch"),
                         (torch.zeros(2, 5, 8, 8, dtype=torch.uint8), "uint8 images must be"),
                         (nhwc.numpy(), "Tensor")]:
        with pytest.raises(SelfSupError, match=message) as info:
            selfsup.augment(bad, cfg)
        assert "\n" not in str(info.value)


def test_checkpoints_of_the_previous_version_load(tmp_path):
    """DeepCluster kept its classifier as `classifier` and its labels as (N,); compiled runs named the backbone
    backbone._orig_mod: runs saved that way load into today's methods with the same weights."""
    from test_train import tiny_config

    cfg = tiny_config(method="deepcluster", epochs=1, data={"samples_per_epoch": None}, optim={"warmup_epochs": 0},
                      eval={"knn_every": 0}, deepcluster={"num_clusters": 4, "pca_dim": 8, "backend": "torch"})
    selfsup.pretrain(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    new = ckpt["method"]
    old = {}
    for key, value in new.items():
        key = key.replace("heads.", "classifier.").replace("backbone.", "backbone._orig_mod.")
        old[key] = value[0] if key == "labels" else value
    torch.save({**ckpt, "method": old}, tmp_path / "run" / "checkpoint.pt")
    loaded = selfsup.load_run(tmp_path / "run").state_dict()
    assert loaded.keys() == new.keys() and all(torch.equal(loaded[k], new[k]) for k in new)


def test_an_unregistered_method_class_trains_and_reloads_when_given(tmp_path):
    class Mine(selfsup.SimCLR):  # not registered: a config cannot rebuild it, so load_run needs it given
        pass

    def make():
        torch.manual_seed(0)
        return Mine(selfsup.build_backbone("exemplar_small", input_size=16), selfsup.SimCLRConfig(proj_hidden=16),
                    data=selfsup.DataInfo(input_size=16))

    cfg = selfsup.load_config(overrides={**FIT, "epochs": 1})
    trained = selfsup.fit(make(), _digits_nchw(), cfg, tmp_path / "run", progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method"].endswith("Mine") and "simclr" not in saved
    with pytest.raises(SelfSupError, match="unknown method"):
        selfsup.load_run(tmp_path / "run")
    again = selfsup.load_run(tmp_path / "run", method=make())
    assert torch.equal(again.head[0].weight, trained.head[0].weight)


def test_a_method_built_for_other_data_is_a_one_line_error(tmp_path):
    images = _digits_nchw()
    method = selfsup.InstanceDiscrimination(selfsup.build_backbone("exemplar_small", input_size=16),
                                            selfsup.InstanceConfig(dim=8, negatives=16),
                                            data=selfsup.DataInfo(num_samples=50, input_size=16))
    cfg = selfsup.load_config(overrides={**FIT, "data": {}})
    with pytest.raises(SelfSupError, match=f"built for 50 training samples but the data has {len(images)}"):
        selfsup.fit(method, images, cfg, progress=False)
    sela = selfsup.SeLa(selfsup.build_backbone("exemplar_small", input_size=16), data=selfsup.DataInfo(len(images), 16))
    with pytest.raises(SelfSupError, match="^sela keeps one label per training image"):
        selfsup.fit(sela, images, selfsup.load_config(overrides=FIT), progress=False)  # samples_per_epoch resamples
