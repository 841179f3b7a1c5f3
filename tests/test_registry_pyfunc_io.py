"""The served model's interface: signature, input parsing, params, and what ships with it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from _registry_helpers import tiny_config

from sdm.registry.packaging import PYFUNC_DISTRIBUTIONS, pip_requirements, pyfunc_path
from sdm.registry.pyfunc_io import ModelInputError, parse_model_input, sampling_options
from sdm.registry.signature import input_example, model_signature


def test_signature_shapes_params_and_example_match() -> None:
    cfg = tiny_config("sample.guidance_scale=2.0", "sample.steps=3")
    sig = model_signature(cfg)
    assert sig.inputs.input_names() == ["labels", "instances"]
    assert [c.required for c in sig.inputs.inputs] == [True, False]
    assert sig.outputs.inputs[0].shape == (-1, 8, 8, 3) and sig.outputs.inputs[0].type == np.dtype("uint8")
    defaults = {p.name: p.default for p in sig.params.params}
    assert defaults == {"guidance_scale": 2.0, "sampler": "ddim", "steps": 3, "seed": 0, "eta": 0.0}
    example = input_example(cfg)
    labels, instances = parse_model_input(example, cfg)
    assert labels.shape == (1, 8, 8) and labels.max() < cfg.model.num_classes
    assert instances is not None and instances.shape == (1, 8, 8)  # the toy model uses instance edges


def test_parse_rows_with_and_without_instances() -> None:
    cfg = tiny_config()
    a, b = np.zeros((8, 8), np.int32), np.ones((8, 8), np.int64)
    labels, instances = parse_model_input(pd.DataFrame({"labels": [a, b.tolist()]}), cfg)
    assert labels.dtype == np.int64 and labels.shape == (2, 8, 8) and instances is None
    labels, instances = parse_model_input(pd.DataFrame({"labels": [a, b], "instances": [b, a]}), cfg)
    assert instances is not None and (instances[0] == 1).all()
    labels, instances = parse_model_input(np.stack([a, a]), cfg)
    assert labels.shape == (2, 8, 8) and instances is None


@pytest.mark.parametrize("frame, problem", [
    (pd.DataFrame({"labels": [np.zeros((4, 4), np.int64)]}), r"row 0: map is 4x4 .* takes 8x8"),
    (pd.DataFrame({"labels": [np.zeros((8, 8), np.float32)]}), "expected integers, got dtype float32"),
    (pd.DataFrame({"labels": [np.zeros((2, 8, 8), np.int64)]}), r"expected a 2-D map \[H, W\], got shape \[2, 8, 8\]"),
    (pd.DataFrame({"labels": [[[0, 1], [2]]]}), "ragged"),
    (pd.DataFrame({"image": [np.zeros((8, 8), np.int64)]}), "no 'labels' column"),
    (pd.DataFrame({"labels": [np.zeros((8, 8), np.int64)] * 2, "instances": [np.zeros((8, 8), np.int64), None]}),
     r"missing for rows \[1\]"),
])
def test_bad_rows_are_clear_errors(frame: pd.DataFrame, problem: str) -> None:
    with pytest.raises(ModelInputError, match=problem):
        parse_model_input(frame, tiny_config())


def test_sampling_options_defaults_and_checks() -> None:
    sample = tiny_config().sample
    assert sampling_options(None, sample) == {"guidance_scale": 1.5, "sampler": "ddim", "steps": 1, "seed": 0,
                                              "eta": 0.0}
    assert sampling_options({"steps": 4, "seed": 9}, sample)["steps"] == 4
    with pytest.raises(ModelInputError, match="sampler='euler' is not one of ddpm, ddim, dpmpp"):
        sampling_options({"sampler": "euler"}, sample)
    with pytest.raises(ModelInputError, match="steps=0"):
        sampling_options({"steps": 0}, sample)


def test_pip_requirements_are_pinned_to_installed_versions() -> None:
    import importlib.metadata

    reqs = pip_requirements()
    assert f"torch=={importlib.metadata.version('torch')}" in reqs
    assert all("==" in r for r in reqs)


@pytest.mark.slow
def test_requirements_cover_what_loading_the_pyfunc_imports() -> None:
    """Load the pyfunc file and the sdm modules it uses in a fresh interpreter; every third-party
    package that the loaded sdm modules (and the pyfunc file) import must be a declared requirement."""
    script = f"""
import ast, importlib.metadata as md, json, runpy, sys
runpy.run_path({str(pyfunc_path())!r})
import sdm.model, sdm.sampling, sdm.registry.pyfunc_io
files = [m.__file__ for n, m in list(sys.modules.items()) if n.split('.')[0] == 'sdm' and getattr(m, '__file__', None)]
files.append({str(pyfunc_path())!r})
tops = set()
for f in files:
    for node in ast.walk(ast.parse(open(f).read())):
        if isinstance(node, ast.Import):
            tops |= {{a.name.split('.')[0] for a in node.names}}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split('.')[0])
tops -= set(sys.stdlib_module_names) | {{'sdm', '__future__'}}
dists = md.packages_distributions()
print(json.dumps({{t: dists.get(t, ['?']) for t in sorted(tops)}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    declared = {d.lower() for d in PYFUNC_DISTRIBUTIONS}
    assert "torch" in imported and "safetensors" in imported  # the check sees sdm.model's imports
    missing = {top: d for top, d in imported.items() if not {x.lower() for x in d} & declared}
    assert not missing, f"loaded sdm modules import {missing}, not in PYFUNC_DISTRIBUTIONS"
