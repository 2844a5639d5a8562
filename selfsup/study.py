"""`selfsup study single-image`: what one image teaches (Asano, Rupprecht, Vedaldi, ICLR 2020), as a grid.

A study file names a grid of cells, method x training source, all on one backbone:
- a source is `all` (the base config's whole data.source), an integer N (a seeded subset of N of its
  images) or an image spec (`image:PATH`, `image:skimage/NAME`); fewer images than a batch are turned into
  data.samples_per_epoch images per epoch by the data.single_image augmentation;
- baselines: `random` (the backbone at its initialisation) and `supervised` (trained on `all` with labels).
Every cell is probed on every layer of its backbone (linear probes on frozen, pooled taps) with the same
labelled eval split, plus weighted kNN on the final representation. Each cell is an ordinary run directory
under STUDY/cells/; a cell whose probes are saved is reused, one with a checkpoint is resumed, so an
interrupted study picks up where it stopped. A cell run with another config is not overwritten without --force.
A cell that fails (a diverging run, such a config clash) is listed in the report and the others still run.

The study file (YAML):
    methods: [rotnet, bigan]                    # pretraining methods
    sources: [all, image:skimage/astronaut]     # training sources, one grid column per entry
    baselines: [random, supervised]             # optional
    base: {...}                                 # the config every cell starts from
    overrides: {rotnet: {...}, bigan: {...}}    # per-method config on top of base
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch

from selfsup.augmentation import normalize, synthesize
from selfsup.config import Config, config_to_dict, load_config, load_run_config, read_yaml, update_config
from selfsup.distributed import pick_device
from selfsup.engine import RunLock, load_checkpoint, load_run, pretrain, read_metrics, source_images
from selfsup.engine.checkpoint import has_checkpoint
from selfsup.engine.logs import log_eval_result
from selfsup.errors import SelfSupError
from selfsup.eval import eval_splits, few_label_probes, layer_knn, linear_probes, run_knn, tap_features
from selfsup.methods import METHODS
from selfsup.nets import Backbone, backbone_from
from selfsup.progress import say, shown
from selfsup.report import filter_grid, image_rows, layer_table, plot_study, study_table

STUDY_KEYS = ("methods", "sources", "baselines", "base", "overrides")
BASELINES = ("random", "supervised")
PROBES = "probes.json"


@dataclass
class Cell:
    """One grid cell: a method (or baseline) trained on one source."""

    method: str  # a pretraining method, or "random" / "supervised"
    source: str  # "all", "N" or an image spec
    config: Config

    @property
    def name(self) -> str:
        return f"{self.method}__{source_slug(self.source)}"

    @property
    def label(self) -> str:
        return "random init" if self.method == "random" else f"{self.method} · {source_label(self.source)}"


def source_slug(source: str) -> str:
    """A directory-safe name for a source: all, n10, astronaut (image:skimage/astronaut), photo (image:a/photo.jpg)."""
    if source == "all" or source.isdigit():
        return source if source == "all" else f"n{source}"
    return Path(source.split(":", 1)[1]).stem


def source_label(source: str) -> str:
    if source == "all":
        return "all images"
    if source.isdigit():
        return f"{source} image{'s' if source != '1' else ''}"
    return f"1 image ({source_slug(source)})"


@dataclass
class Study:
    """A checked study file: the grid's methods and sources, its baselines, and the configs to build cells from."""

    methods: list[str]
    sources: list[str]
    baselines: list[str]
    base: dict
    overrides: dict

    def cell_config(self, method: str, source: str) -> Config:
        """base, then the method's overrides, then what the source needs."""
        cfg = load_config(overrides=self.base)
        update_config(cfg, self.overrides.get(method, {}))
        if method != "random":  # random init is the backbone alone: no method
            cfg.method = method
        if method in METHODS and METHODS[method].per_sample_state and source == "all":
            cfg.data.samples_per_epoch = None  # they keep a label per image: epochs over the real images, no resampling
        if source.isdigit():
            cfg.data.num_images = int(source)
        elif source != "all":
            cfg.data.source = source
            cfg.data.num_images = None
        return cfg

    def cells(self) -> list[Cell]:
        grid = [Cell(m, s, self.cell_config(m, s)) for m in self.methods for s in self.sources]
        grid += [Cell(b, "all", self.cell_config(b, "all")) for b in self.baselines]
        return grid


def load_study(path: str | Path, methods: list[str] | None = None, sources: list[str] | None = None) -> Study:
    """Read and check a study file; `methods` / `sources` replace the file's lists when given."""
    data = read_yaml(path, "study file", "recipes/single_image_cpu.yaml")
    return make_study(data, methods, sources, where=str(path))


def make_study(data: dict, methods: list[str] | None = None, sources: list[str] | None = None,
               where: str = "study") -> Study:
    if not isinstance(data, dict) or set(data) - set(STUDY_KEYS):
        extra = sorted(set(data) - set(STUDY_KEYS)) if isinstance(data, dict) else data
        raise SelfSupError(f"{where}: unknown study keys {extra}; a study file has {', '.join(STUDY_KEYS)}")
    study = Study([str(m) for m in (methods or data.get("methods") or [])],
                  [str(s) for s in (sources or data.get("sources") or [])],
                  [str(b) for b in data.get("baselines") or []], data.get("base") or {}, data.get("overrides") or {})
    if not study.methods or not study.sources:
        raise SelfSupError(f"{where}: a study needs at least one method and one source")
    pretraining = [k for k, cls in METHODS.items() if not cls.needs_targets]
    for m in study.methods:
        if m not in pretraining:
            raise SelfSupError(f"{where}: unknown study method {m!r}; use pretraining methods from "
                               f"{', '.join(pretraining)}")
    for b in study.baselines:
        if b not in BASELINES:
            raise SelfSupError(f"{where}: unknown baseline {b!r}; use {' or '.join(BASELINES)}")
    for s in study.sources:
        if not (s == "all" or (s.isdigit() and int(s) > 0) or s.startswith("image:")):
            raise SelfSupError(f"{where}: source {s!r} must be all, a number of images, or image:PATH / "
                               "image:skimage/NAME")
    for m in study.overrides:
        if m not in study.methods and m not in study.baselines and m not in METHODS:
            raise SelfSupError(f"{where}: overrides for {m!r}, which is neither a method nor a baseline")
    study.cells()  # every cell's config must build: fail now, not an hour in
    return study


def _same_config(saved: dict, cfg: Config, ignore: tuple[str, ...] = (), method: bool = True) -> bool:
    """Whether a saved config dict is cfg (leaving out the `ignore` sections, and the method when not `method`)."""
    a, b = config_to_dict(load_run_config(saved)), config_to_dict(cfg)
    if not method:  # a random-init cell trains no method: which one its config names does not matter
        ignore = (*ignore, "method", a["method"], b["method"])
    return a.keys() - set(ignore) == b.keys() - set(ignore) and all(a[k] == b[k] for k in a if k not in ignore)


def _random_backbone(cfg: Config) -> Backbone:
    torch.manual_seed(cfg.seed)  # as fit does before building the method: the runs' own starting point
    return backbone_from(cfg.model)


def run_cell(cell: Cell, cell_dir: Path, splits, device: torch.device, force: bool, progress: bool = True) -> dict:
    """Train (or resume) the cell's run, probe every layer, save probes.json; reuse a finished cell. The cell's
    directory is locked throughout, so two studies on one folder never write the same cell."""
    with RunLock(cell_dir):
        return _run_cell(cell, cell_dir, splits, device, force, progress)


def _run_cell(cell: Cell, cell_dir: Path, splits, device: torch.device, force: bool, progress: bool) -> dict:
    saved, cfg = cell_dir / PROBES, cell.config
    run = load_checkpoint(cell_dir) if has_checkpoint(cell_dir) and not force else None
    if not force:
        if saved.is_file():
            result = json.loads(saved.read_text())
            if _same_config(result["config"], cfg, method=cell.method != "random"):
                return result
            if run is None:
                raise SelfSupError(f"{cell_dir} holds results for another config than cell {cell.name}; "
                                   "pass --force to redo it")
        # Training is reused when all but the eval section matches: a new probe setting re-probes, it does not retrain.
        if run is not None and not _same_config(run["config"], cfg, ignore=("eval",)):
            raise SelfSupError(f"{cell_dir} holds a run with another config than cell {cell.name}; "
                               "pass --force to redo it")
    knn = None
    if cell.method == "random":
        cell_dir.mkdir(parents=True, exist_ok=True)
        backbone, transform, train = _random_backbone(cfg).to(device).eval(), normalize, {}
    else:
        if run is None or run["epoch"] < cfg.epochs:
            # Without a checkpoint the directory holds at most a partial first epoch: starting over loses nothing.
            pretrain(cfg, cell_dir, resume=run is not None, force=run is None, progress=progress)
        lines = read_metrics(cell_dir)
        train = {"epochs": lines[-1]["epoch"], "train_minutes": round(sum(x["epoch_seconds"] for x in lines) / 60, 2),
                 "final_loss": round(lines[-1]["loss"], 4)}
        if run is None or run["epoch"] < cfg.epochs or _same_config(run["config"], cfg):
            knn = lines[-1].get("knn_top1")  # pretraining's last epoch measured it with this eval section
        method = load_run(cell_dir, device)
        backbone, transform = method.eval_backbone, method.input_transform
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    feats = tap_features(backbone, cfg, device, None, splits, transform)  # every tap
    linear = linear_probes(feats, cfg, device)
    if knn is None:
        knn = run_knn(backbone, cfg, device, splits, transform)
    extra = {}
    if cfg.eval.few_labels:
        # Where random features are weak: kNN on every layer, and probes that see only a few labels per class.
        extra["layer_knn"] = {k: round(v, 2) for k, v in layer_knn(feats, cfg, device).items()}
        few = few_label_probes(feats, cfg, device, cfg.eval.few_labels, cfg.eval.few_label_draws)
        extra["few_labels"] = {k: [round(m, 2), round(s, 2)] for k, (m, s) in few.items()}
    result = {"cell": cell.name, "label": cell.label, "method": cell.method, "source": cell.source,
              "linear": {k: round(v, 2) for k, v in linear.items()}, "knn": round(knn, 2), **extra, **train,
              "probe_minutes": round((time.time() - t0) / 60, 2),
              "config": config_to_dict(cfg)}
    if cell.method != "random":  # the cell's probes beside its training curves (TensorBoard, W&B)
        logged = {k: v for k, v in result.items() if k in ("linear", "knn", "layer_knn")}
        if "few_labels" in extra:
            logged["few_labels_mean"] = {k: v[0] for k, v in extra["few_labels"].items()}
        log_eval_result(cell_dir, cfg, "study", logged, result.get("epochs", cfg.epochs))
    conv1 = _first_conv(backbone).detach().cpu().numpy()
    np.save(cell_dir / "conv1_filters.npy", conv1)
    if cell.method != "random":  # what training wrote into conv1: its change from the run's own initialisation
        start = _first_conv(load_run(cell_dir, device, random_init=True).eval_backbone).detach().cpu().numpy()
        np.save(cell_dir / "conv1_change.npy", conv1 - start)
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(saved)
    return result


def _first_conv(backbone: Backbone) -> torch.Tensor:
    return next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)).weight


def source_picture(cells: list[Cell], per_source: int = 8) -> np.ndarray | None:
    """Each non-`all` training source (up to 4 of its images) and `per_source` of the images made from it."""
    rows = []
    for cell in cells:
        if cell.source == "all" or any(r[0] == cell.source for r in rows):
            continue
        cfg = cell.config
        images = torch.from_numpy(np.array(source_images(cfg).images))
        made = synthesize(images, cfg.data.single_image, torch.Generator().manual_seed(cfg.seed), per_source)
        size = made.shape[1]
        shown = torch.nn.functional.interpolate(images[:4].permute(0, 3, 1, 2).float() / 255, size=(size, size),
                                                mode="area" if images.shape[1] > size else "nearest")
        rows.append((cell.source, torch.cat([shown, made.permute(0, 3, 1, 2).float() / 255])))
    if not rows:
        return None
    width = max(len(r[1]) for r in rows)
    return image_rows([torch.cat([r, torch.ones(width - len(r), *r.shape[1:])]) for _, r in rows])


def run_study(study: Study, out: Path, force: bool = False, device: str = "auto", progress: bool = True,
              command: str = "") -> dict:
    """Run (or resume) every cell, then write report.md, layers.png, filters.png and sources.png into out."""
    with shown(progress):  # progress=False silences every pass inside (training, features, probes)
        return _run_study(study, Path(out), force, device, progress, command)


def _run_study(study: Study, out: Path, force: bool, device: str, progress: bool, command: str) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = study.cells()
    dev = pick_device(device)
    splits = eval_splits(cells[0].config)
    results, failed = {}, {}
    t0 = time.time()
    for i, cell in enumerate(cells):
        if progress:
            say(f"[{i + 1}/{len(cells)}] {cell.name}")
        try:
            results[cell.name] = run_cell(cell, out / "cells" / cell.name, splits, dev, force, progress)
        except SelfSupError as e:  # one bad cell (a diverging run, a config clash) must not cost the others
            failed[cell.name] = str(e)
            say(f"cell {cell.name} failed: {e}")
    if results:
        write_study_report(study, results, out, command, minutes=(time.time() - t0) / 60, device=str(dev),
                           failed=failed, splits=splits)
        (out / "results.json").write_text(json.dumps({k: {x: v for x, v in r.items() if x != "config"}
                                                      for k, r in results.items()}, indent=2))
    if failed:
        raise SelfSupError(f"{len(failed)} of {len(cells)} cells failed ({', '.join(failed)}); the others are in "
                           f"{out}; fix the config and run again to redo just those")
    return results


def write_study_report(study: Study, results: dict, out: Path, command: str = "", minutes: float | None = None,
                       device: str = "", failed: dict[str, str] | None = None, splits=None) -> Path:
    """report.md with the per-layer table and the three pictures, from the cells' probe results."""
    cells = study.cells()
    rows = {results[c.name]["label"]: results[c.name] for c in cells if c.name in results}
    plot_study(rows, study.methods, out / "layers.png")
    filter_grid({label: np.load(out / "cells" / r["cell"] / "conv1_filters.npy") for label, r in rows.items()},
                out / "filters.png")
    changes = {label: out / "cells" / r["cell"] / "conv1_change.npy" for label, r in rows.items()}
    changes = {label: np.load(p) for label, p in changes.items() if p.is_file()}
    if changes:
        filter_grid(changes, out / "filter_changes.png")
    sources = source_picture(cells)
    if sources is not None:
        from PIL import Image

        Image.fromarray(sources).save(out / "sources.png")
    cfg = cells[0].config
    splits = splits or eval_splits(cfg)  # run_study passes the splits it probed with
    e = cfg.eval
    lines = [
        "# What a single image teaches",
        "",
        f"What you are looking at: how well the features of networks trained without labels "
        f"({', '.join(study.methods)}) on {' or on '.join(source_label(s) for s in study.sources)} let a simple "
        f"classifier tell apart the classes of {e.source or cfg.data.source}, layer by layer"
        + ("" if not study.baselines else ", beside " + " and ".join(
            {"random": "an untrained network (random init)", "supervised": "a network trained with the labels "
             "(supervised)"}[b] for b in study.baselines)) + ".",
        "",
        f"Backbone `{cfg.model.backbone}` (width {cfg.model.width}) at {cfg.model.input_size} px, the same for every "
        f"cell. Linear probes on every conv layer, each "
        + ("globally average-pooled (one number per channel)" if e.probe_dims == 1
           else f"average-pooled to about {e.probe_dims} dimensions")
        + f" ({e.probe_epochs} epochs of AdamW), and weighted kNN (k={e.knn_k}) on the final representation"
        + (f", on every layer, and linear probes that see {e.few_labels} labelled images per class (mean ± std over "
           f"{e.few_label_draws} seeded draws, the same draws for every cell)" if e.few_labels else "")
        + f"; trained and tested on {e.source or cfg.data.source} ({len(splits[0])} train / {len(splits[1])} test "
        "images).",
        "",
        f"Run on {date.today().isoformat()}{', device ' + device if device else ''}"
        + (f"; this invocation took {minutes:.1f} min (reused cells cost nothing)." if minutes is not None else ".")
        + f" Summed over the cells: {sum(r.get('train_minutes', 0) for r in rows.values()):.1f} min of training and "
        f"{sum(r.get('probe_minutes', 0) for r in rows.values()):.1f} min of probing.",
        "",
    ]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    if failed:
        lines += ["Cells that failed (left out below):", "", *[f"- {name}: {why}" for name, why in failed.items()], ""]
    summary = study_summary(rows)
    if summary:
        lines += [summary, ""]
    lines += ["Linear probe top-1 (%) per layer, all training labels:", "", study_table(rows), ""]
    if e.few_labels:
        lines += [f"kNN top-1 (%) per layer (k={e.knn_k}, all training labels):", "", layer_table(rows, "layer_knn"),
                  "", f"Linear probe top-1 (%) per layer with {e.few_labels} labels per class, mean ± std over "
                  f"{e.few_label_draws} draws:", "", layer_table(rows, "few_labels"), ""]
    lines += ["![accuracy vs layer](layers.png)", "", "conv1 filters of each cell:", "",
              "![conv1 filters](filters.png)", ""]
    if changes:
        lines += ["What training changed in conv1 (each filter minus the same filter at the run's initialisation, "
                  "scaled on its own; random init, which changes nothing, is left out): what the training images "
                  "wrote into the filters (on grey digits grey changes, on a colour photograph smooth coloured "
                  "ones).", "",
                  "![conv1 changes](filter_changes.png)", ""]
    if sources is not None:
        lines += ["Each training source (first column(s)) and images made from it by the single-image augmentation:",
                  "", "![sources](sources.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def study_summary(rows: dict[str, dict]) -> str:
    """What the tables show, counted from them: on how many layers each cell beats random init by more than a
    standard deviation (few-label probes, else the linear probe), and where one image is level with all of them."""
    random = next((r for r in rows.values() if r["method"] == "random"), None)
    key = "few_labels" if random is not None and "few_labels" in random else "linear"
    if random is None:
        return ""

    def mean_std(v):
        return (v[0], v[1]) if isinstance(v, (list, tuple)) else (v, 0.0)

    parts = []
    for label, r in rows.items():
        if r is random or r["method"] == "supervised":
            continue
        beats = [layer for layer, v in r[key].items()
                 if mean_std(v)[0] - mean_std(random[key][layer])[0]
                 > max(mean_std(v)[1], mean_std(random[key][layer])[1])]
        parts.append(f"{label}: {len(beats)} of {len(r[key])} layers" + (f" ({', '.join(beats)})" if beats else ""))
    what = ("by more than one standard deviation (few-label probes)" if key == "few_labels"
            else "(linear probes, one run each: any higher score)")
    text = (f"Layers where a pretrained cell beats random init {what}: " + "; ".join(parts) + ".") if parts else ""
    level = []
    for method in {r["method"] for r in rows.values()} - {"random", "supervised"}:
        whole = next((r for r in rows.values() if r["method"] == method and r["source"] == "all"), None)
        for r in rows.values():
            if whole is None or r["method"] != method or r["source"] == "all":
                continue
            close = [layer for layer, v in r[key].items()
                     if mean_std(v)[0] >= mean_std(whole[key][layer])[0]
                     - max(mean_std(v)[1], mean_std(whole[key][layer])[1])]
            level.append(f"{r['label']} is within a standard deviation of (or above) {method} on all images on "
                         f"{', '.join(close) if close else 'no layer'}")
    if level:
        text += " " + "; ".join(sorted(level)) + "."
    return text


__all__ = ["Study", "Cell", "load_study", "make_study", "run_study", "run_cell", "write_study_report", "source_slug"]
