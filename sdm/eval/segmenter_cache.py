"""Save, load and cache evaluation segmenters (one per data version and settings).

A trained segmenter is a directory: ``segmenter.safetensors`` (weights) +
``segmenter.json`` (architecture, classes, data version, training settings and
its mIoU on the real val split: the ceiling for generated images). The cache
keeps one under ``<cache>/segmenters/<data hash>/<settings hash>/`` so that a
second ``sdm evaluate`` (or ``train-segmenter``) on the same data reuses it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

from sdm.atomic import atomic_dir
from sdm.config import Config
from sdm.eval.cache import cache_root, data_key, safe_name, short_hash
from sdm.eval.segmenter import ARCH, EvalSegNet, Segmenter, SegmenterError, load_torchscript_segmenter

WEIGHTS = "segmenter.safetensors"
META = "segmenter.json"


def _settings(config: Config) -> dict:
    s = config.evaluate.segmenter
    return {"arch": ARCH, "width": s.width, "steps": s.steps, "lr": s.lr, "batch_size": s.batch_size,
            "seed": config.evaluate.seed}


def cached_segmenter_dir(key: str, config: Config) -> Path:
    """Where the segmenter for this data (content key) and these segmenter settings is cached."""
    return cache_root() / "segmenters" / safe_name(key) / short_hash(_settings(config))


def save_segmenter(directory: str | Path, net: EvalSegNet, meta: dict) -> Path:
    """Write weights + JSON into ``directory`` atomically (temp dir, then rename)."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_segmenter_dir(directory: str | Path) -> Segmenter:
    """Load a segmenter directory written by :func:`save_segmenter`."""
    directory = Path(directory)
    meta_path = directory / META
    if not meta_path.is_file() or not (directory / WEIGHTS).is_file():
        raise SegmenterError(f"{directory}: not a segmenter directory (needs {WEIGHTS} and {META})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise SegmenterError(f"{meta_path}: invalid JSON ({e})") from e
    if meta.get("arch") != ARCH:
        raise SegmenterError(f"{meta_path}: architecture {meta.get('arch')!r} is not {ARCH!r}")
    net = EvalSegNet(int(meta["num_classes"]), width=int(meta["width"]))
    try:
        net.load_state_dict(load_file(str(directory / WEIGHTS)))
    except RuntimeError as e:
        raise SegmenterError(f"{directory / WEIGHTS}: weights do not fit the architecture in {META} ({e})") from e
    net.eval()
    return Segmenter(
        module=net,
        num_classes=net.num_classes,
        source=f"evalsegnet:{directory}",
        feature_space=f"EvalSegNet pooled bottleneck ({net.feature_dim}-d)",
        info=meta,
    )


def load_segmenter(path: str | Path, num_classes: int) -> Segmenter:
    """A segmenter directory (ours) or a TorchScript file (the user's), checked against ``num_classes``."""
    path = Path(path)
    if path.is_dir():
        seg = load_segmenter_dir(path)
    elif path.is_file():
        seg = load_torchscript_segmenter(path, num_classes)
    else:
        raise SegmenterError(f"{path}: no such segmenter (a directory from `sdm evaluate train-segmenter` "
                             "or a TorchScript file)")
    if seg.num_classes != num_classes:
        raise SegmenterError(f"{path}: segmenter has {seg.num_classes} classes but the data has {num_classes}")
    return seg


def train_and_save(
    prepared_dir: str | Path,
    config: Config,
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[Segmenter, Path, bool]:
    """The segmenter for ``prepared_dir``: from the cache (or ``out_dir``) when there, else trained and saved.

    Returns (segmenter, its directory, whether it was trained now).
    """
    from sdm.data.manifest import read_manifest
    from sdm.eval.segmenter_train import load_split_arrays, segmenter_miou, train_segmenter

    manifest = read_manifest(prepared_dir)
    key, version = data_key(prepared_dir)
    directory = Path(out_dir) if out_dir else cached_segmenter_dir(key, config)
    if not force and (directory / META).is_file():
        seg = load_segmenter(directory, manifest.num_classes)
        if seg.info.get("data_key") == key and all(seg.info.get(k) == v for k, v in _settings(config).items()):
            log(f"evaluation segmenter: reusing {directory}")
            return seg, directory, False
        log(f"evaluation segmenter at {directory} was trained on other data or settings "
            f"({seg.info.get('data_version')}): retraining")
    log(f"evaluation segmenter: training {config.evaluate.segmenter.steps} steps on {prepared_dir} (train split)")
    net, summary = train_segmenter(prepared_dir, manifest.num_classes, config.evaluate.segmenter,
                                   data_config=config.data, seed=config.evaluate.seed, device=device, log=log)
    meta = {**_settings(config), **summary, "num_classes": manifest.num_classes,
            "class_names": list(manifest.class_names), "data_key": key, "data_version": version,
            "prepared_dir": str(Path(prepared_dir).resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    val = load_split_arrays(prepared_dir, "val")
    seg = Segmenter(module=net.to(device), num_classes=manifest.num_classes, source="", feature_space="", info=meta)
    if len(val["ids"]):
        miou, per_class = segmenter_miou(seg, val["images"], val["labels"])
        meta["val_miou"] = miou
        meta["val_per_class_iou"] = [None if np.isnan(v) else float(v) for v in per_class]
        meta["val_images"] = len(val["ids"])
        log(f"evaluation segmenter: mIoU on the real val split {miou:.4f} ({len(val['ids'])} images)")
    save_segmenter(directory, net, meta)
    return load_segmenter_dir(directory), directory, True
