"""Parity with the official SDM model: same weights, same inputs, compare outputs.

Needs a checkout of the official code (github.com/WeilunWang/semantic-diffusion-model;
only its ``guided_diffusion`` package, which imports nothing beyond torch, and the label-map
encoding of its ``image_sample.py``):

    .venv/bin/python benchmarks/parity_official.py --official PATH [--paper] [--write-fixture FILE]
        [--write-output-fixture FILE]

(or ``SDM_OFFICIAL_REPO=PATH``). Without one it says so and exits 0: nothing of
the official code is part of this repository. For each config it builds the
official ``UNetModel`` as the official ``create_model`` does, fills every
parameter (the zero-initialised convs too) with random values from a generator
seeded by its config and key name (tests/_official_parity.py), loads that state
dict with ``sdm.official_checkpoint.load_official_checkpoint`` and reports
max|ours - official| / max|official| for the plain and the SPADE-cached
forward. The label maps go to the official model through the official scripts'
``preprocess_input``, to ours through ``sdm.conditioning.make_segmap``.
``--write-fixture`` writes the small configs' key names and shapes,
``--write-output-fixture`` their inputs and official outputs (safetensors):
the facts tests/test_official_keys.py checks against, with no official code.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the fixtures' format and weight rule live beside the tests

from _official_parity import config_of, official_state, probe  # noqa: E402

from sdm.conditioning import make_segmap  # noqa: E402
from sdm.official_checkpoint import load_official_checkpoint  # noqa: E402

# Small configs covering: instances or not, resblock up/down or conv resampling, scale-shift or additive
# timestep, learn_sigma or not, num_head_channels / num_heads_upsample, channel_mult 0.5, non-square.
SMALL = {
    "small-instances-updown": dict(size=[32, 32], num_classes=6, use_instance=True, mc=32, nrb=2, mult=[1, 2, 2],
                                   attn=[16, 8], heads=2, head_ch=-1, heads_up=-1, updown=True, ss=True, sigma=True),
    "small-noinstance-updown": dict(size=[32, 32], num_classes=7, use_instance=False, mc=64, nrb=1,
                                    mult=[0.5, 1, 2], attn=[8], heads=4, head_ch=32, heads_up=-1, updown=True,
                                    ss=True, sigma=True),
    "small-resample-conv": dict(size=[32, 32], num_classes=5, use_instance=True, mc=32, nrb=1, mult=[1, 2],
                                attn=[16], heads=4, head_ch=-1, heads_up=2, updown=False, ss=False, sigma=False),
    "nonsquare-16x32-updown": dict(size=[16, 32], num_classes=4, use_instance=True, mc=32, nrb=1, mult=[1, 1, 2],
                                   attn=[8], heads=1, head_ch=16, heads_up=-1, updown=True, ss=True, sigma=True),
}
# The paper's ADE20K model (scripts/ade20k.sh): 256x256, 151 classes, no instances.
PAPER = {
    "paper-ade20k-256": dict(size=[256, 256], num_classes=151, use_instance=False, mc=256, nrb=2,
                             mult=[1, 1, 2, 2, 4, 4], attn=[32, 16, 8], heads=4, head_ch=64, heads_up=-1,
                             updown=True, ss=True, sigma=True),
}


def official_model(unet_model_cls, c: dict):
    longest = max(c["size"])
    return unet_model_cls(
        image_size=longest, in_channels=3, model_channels=c["mc"], out_channels=6 if c["sigma"] else 3,
        num_res_blocks=c["nrb"], attention_resolutions=tuple(longest // r for r in c["attn"]), dropout=0.0,
        channel_mult=tuple(c["mult"]), num_classes=c["num_classes"] + (1 if c["use_instance"] else 0),
        use_checkpoint=False, use_fp16=False, num_heads=c["heads"], num_head_channels=c["head_ch"],
        num_heads_upsample=c["heads_up"], use_scale_shift_norm=c["ss"], resblock_updown=c["updown"],
        use_new_attention_order=False)


def official_conditioning(official_repo: Path):
    """The official scripts' ``preprocess_input`` (one-hot + instance edges), read from image_sample.py.

    Only these two functions are run (the script itself imports torchvision and MPI, which we lack).
    """
    path = official_repo / "image_sample.py"
    tree = ast.parse(path.read_text(), str(path))
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("preprocess_input", "get_edges")]
    namespace: dict = {"th": torch}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["preprocess_input"]


def fixed_inputs(c: dict, n: int) -> dict[str, torch.Tensor]:
    """x_t [n,3,H,W], t [n], label and instance maps [n,H,W] (blocks of 4 and 8 px) from seed 1."""
    g = torch.Generator().manual_seed(1)
    h, w = c["size"]
    inputs = {"x_t": torch.randn(n, 3, h, w, generator=g), "t": torch.linspace(0, 999, n).long()}
    label = torch.randint(0, c["num_classes"], (n, h // 4, w // 4), generator=g)
    inputs["label"] = label.repeat_interleave(4, 1).repeat_interleave(4, 2).int()
    inst = torch.randint(0, 3, (n, h // 8, w // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    if c["use_instance"]:
        inputs["instance"] = inst.int()
    return inputs


def compare(unet_model_cls, preprocess_input, name: str, c: dict, n: int) -> tuple[dict, dict, float]:
    """Official vs ours on the same weights and inputs.

    Returns (key names and shapes, the output fixture's tensors for this config, worst relative difference).
    """
    official = official_model(unet_model_cls, c).eval()
    state = official_state(name, {k: list(v.shape) for k, v in official.state_dict().items()})
    official.load_state_dict(state)
    config = config_of(c)
    ours = load_official_checkpoint(state, config)
    inputs = fixed_inputs(c, n)
    data = {"label": inputs["label"][:, None]}
    if "instance" in inputs:
        data["instance"] = inputs["instance"][:, None].long()
    official_y = preprocess_input(data, c["num_classes"])["y"]
    segmap = make_segmap(inputs["label"].long(), inputs.get("instance"), config)
    if not torch.equal(official_y, segmap):
        print(f"{name}: our label map encoding differs from the official preprocess_input", file=sys.stderr)
    x_t, t = inputs["x_t"], inputs["t"]
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = official(x_t, t, y=official_y)
        t1 = time.perf_counter()
        got = ours(x_t, t, segmap)
        cached = ours(x_t, t, segmap, spade_cache=ours.spade_cache(segmap))
    scale = ref.abs().max().item()
    rel = (got - ref).abs().max().item() / scale
    rel_cached = (cached - ref).abs().max().item() / scale
    print(f"{name:26s} out {list(got.shape)} max|official| {scale:.3g}  max rel diff: plain {rel:.2e}, "
          f"SPADE-cached {rel_cached:.2e}  (official forward {t1 - t0:.1f} s)", flush=True)
    keys = {"official_args": c, "keys": {k: list(v.shape) for k, v in state.items()}}
    outputs = {**inputs, "output": ref.contiguous(), "probe": probe(state)}
    worst = max(rel, rel_cached) if torch.equal(official_y, segmap) else float("inf")
    return keys, {f"{name}/{k}": v for k, v in outputs.items()}, worst


def write_fixture(path: Path, fixture: dict) -> None:
    about = ("Key names and shapes of the official SDM UNetModel (guided_diffusion/unet.py of "
             "github.com/WeilunWang/semantic-diffusion-model, UNetModel built as create_model does: "
             "attention_resolutions as downsampling factors longest_side // res, num_classes + 1 with instances) "
             "for small configs, read off instantiated models by benchmarks/parity_official.py. official_args uses "
             "our names: size [H,W], mc model_channels, nrb num_res_blocks, mult channel_mult, attn "
             "attention_resolutions (feature sizes), heads/head_ch/heads_up, updown resblock_updown, "
             "ss use_scale_shift_norm, sigma learn_sigma.")
    lines = ["{", f" \"_about\": {json.dumps(about)},"]
    for i, (name, entry) in enumerate(fixture.items()):
        keys = list(entry["keys"].items())
        lines += [f" {json.dumps(name)}: {{", f"  \"official_args\": {json.dumps(entry['official_args'])},",
                  "  \"keys\": {"]
        lines += [f"   {json.dumps(k)}: {json.dumps(s)}" + ("," if j < len(keys) - 1 else "")
                  for j, (k, s) in enumerate(keys)]
        lines += ["  }", " }" + ("," if i < len(fixture) - 1 else "")]
    path.write_text("\n".join([*lines, "}"]) + "\n")


def write_output_fixture(path: Path, outputs: dict[str, torch.Tensor], official_repo: Path) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=official_repo, capture_output=True, text=True)
    about = ("Inputs and outputs of the official SDM UNetModel (github.com/WeilunWang/semantic-diffusion-model, "
             "built as create_model does) for the configs of official_keys_small.json; weights from "
             "tests/_official_parity.py official_state; written by benchmarks/parity_official.py.")
    save_file(outputs, str(path), metadata={
        "about": about, "official_commit": commit.stdout.strip() or "unknown", "torch": torch.__version__,
        "configs": json.dumps(sorted({k.split("/")[0] for k in outputs})),
    })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", default=os.environ.get("SDM_OFFICIAL_REPO", ""),
                        help="a checkout of the official repo (holding guided_diffusion/)")
    parser.add_argument("--paper", action="store_true", help="also compare the paper's ADE20K model (~2.6 GB each)")
    parser.add_argument("--write-fixture", type=Path, help="write the small configs' official keys and shapes here")
    parser.add_argument("--write-output-fixture", type=Path,
                        help="write the small configs' inputs and official outputs here (safetensors)")
    args = parser.parse_args()
    if not args.official:
        print("skipped: pass --official PATH (or SDM_OFFICIAL_REPO) pointing at a checkout of "
              "github.com/WeilunWang/semantic-diffusion-model")
        return 0
    if not (Path(args.official) / "guided_diffusion" / "unet.py").exists():
        print(f"error: {args.official}: no guided_diffusion/unet.py here", file=sys.stderr)
        return 2
    official_repo = Path(args.official).resolve()
    sys.path.insert(0, str(official_repo))
    from guided_diffusion.unet import UNetModel

    preprocess_input = official_conditioning(official_repo)
    fixture, outputs, worst = {}, {}, 0.0
    for name, c in SMALL.items():
        fixture[name], out, rel = compare(UNetModel, preprocess_input, name, c, n=2)
        outputs.update(out)
        worst = max(worst, rel)
    if args.paper:
        for name, c in PAPER.items():
            _, _, rel = compare(UNetModel, preprocess_input, name, c, n=1)
            worst = max(worst, rel)
    print(f"worst max relative difference: {worst:.2e} ({'PASS' if worst <= 1e-5 else 'FAIL'} at 1e-5)")
    if args.write_fixture:
        write_fixture(args.write_fixture, fixture)
        print(f"wrote {args.write_fixture}")
    if args.write_output_fixture:
        write_output_fixture(args.write_output_fixture, outputs, official_repo)
        print(f"wrote {args.write_output_fixture}")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
