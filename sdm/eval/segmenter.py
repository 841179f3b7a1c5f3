"""The evaluation segmenter: label maps predicted from images, and pooled features.

mIoU of generated images against their input label maps needs a segmentation
network that sees only the image. Two kinds are supported behind one interface
(:class:`Segmenter`):

- :class:`EvalSegNet`, a compact fully convolutional network (a small U-Net
  with a dilated bottleneck) trained by ``sdm evaluate train-segmenter`` on the
  real training split; its globally pooled bottleneck is the feature space of
  FSD and of feature diversity;
- a user TorchScript module (``torch.jit.load``): ``forward(x)`` takes float
  images [N, 3, H, W] in [-1, 1] and returns logits [N, C, H, W], or a tuple
  (logits [N, C, H, W], features [N, D]). Without features, the spatial mean of
  the softmax probabilities [N, C] is the feature space (recorded as such).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdm.errors import InputError

ARCH = "sdm-evalsegnet-v1"


class SegmenterError(InputError):
    """A segmenter that cannot be loaded or does not fit the data."""


def _block(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        # GroupNorm, not BatchNorm: identical behaviour in training and evaluation.
        nn.GroupNorm(groups, cout),
        nn.ReLU(inplace=True),
    )


class EvalSegNet(nn.Module):
    """Small U-Net: three scales (1, 1/2, 1/4) with a dilated 1/4 bottleneck for context.

    Images of any size divisible by 4 (others are padded internally).
    """

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.width = width
        self.enc1 = nn.Sequential(_block(3, w), _block(w, w))
        self.enc2 = nn.Sequential(_block(w, 2 * w, stride=2), _block(2 * w, 2 * w))
        self.enc3 = nn.Sequential(
            _block(2 * w, 4 * w, stride=2), _block(4 * w, 4 * w, dilation=2), _block(4 * w, 4 * w, dilation=4)
        )
        self.dec2 = nn.Sequential(_block(6 * w, 2 * w), _block(2 * w, 2 * w))
        self.dec1 = nn.Sequential(_block(3 * w, w), _block(w, w))
        self.head = nn.Conv2d(w, num_classes, 1)

    @property
    def feature_dim(self) -> int:
        return 4 * self.width

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float [N, 3, H, W] in [-1, 1] -> (logits [N, C, H, W], pooled features [N, 4 * width])."""
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % 4, (-w) % 4
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="nearest"), e1], 1))
        logits = self.head(d1)[..., :h, :w]
        return logits, e3.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


@dataclass
class Segmenter:
    """A ready evaluation segmenter: a network plus where it came from.

    ``source`` says what it is (for evaluation.json); ``feature_space``
    describes the features FSD and feature diversity are computed in.
    """

    module: nn.Module
    num_classes: int
    source: str
    feature_space: str
    info: dict

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.module, EvalSegNet):
            return self.module.forward_features(x)
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            if len(out) != 2:
                raise SegmenterError(f"{self.source}: expected (logits, features), got a {len(out)}-tuple")
            logits, feats = out
        else:
            logits, feats = out, None
        if logits.ndim != 4 or logits.shape[0] != x.shape[0] or logits.shape[-2:] != x.shape[-2:]:
            raise SegmenterError(
                f"{self.source}: logits must be [N, C, H, W] = [{x.shape[0]}, C, {x.shape[2]}, {x.shape[3]}], "
                f"got {list(logits.shape)}"
            )
        if logits.shape[1] != self.num_classes:
            raise SegmenterError(
                f"{self.source}: predicts {logits.shape[1]} classes but the data has {self.num_classes}"
            )
        if feats is None:
            feats = logits.float().softmax(1).mean(dim=(2, 3))
            self.feature_space = "pooled softmax probabilities (the TorchScript segmenter returns only logits)"
        return logits, feats.reshape(feats.shape[0], -1)

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """images: uint8 [N, H, W, 3] -> (label maps int64 [N, H, W], features float64 [N, D])."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise SegmenterError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        self.module.eval()
        param = next(iter(self.module.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        preds, feats = [], []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            logits, f = self._run(x)
            preds.append(logits.argmax(1).cpu().numpy().astype(np.int64))
            feats.append(f.double().cpu().numpy())
        return np.concatenate(preds), np.concatenate(feats)


def uint8_from_model_range(images: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (the quantisation generated images get too)."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def load_torchscript_segmenter(path: str | Path, num_classes: int) -> Segmenter:
    """A user TorchScript segmenter (see the module docstring for its contract).

    TorchScript archives hold code that runs on load: pass only files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise SegmenterError(f"{path}: no such TorchScript segmenter file")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - report any load failure with the file name
        raise SegmenterError(f"{path}: not a TorchScript module ({type(e).__name__}: {e})") from e
    module.eval()
    return Segmenter(
        module=module,
        num_classes=num_classes,
        source=f"torchscript:{path}",
        feature_space="features returned by the TorchScript segmenter",
        info={"path": str(path)},
    )
