"""What ``make demo`` leaves to try the model with (issue 16): label maps, instance maps and a request.

The files must be what ``sdm sample`` and the served model take as they are: at the model's size,
class ids in range, one request the pyfunc parses. The printed commands name sdm's own store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdm.cli import app
from sdm.cli.pipeline_cmd import store_for_shell, try_it_commands
from sdm.data.loader import PreparedDataset
from sdm.demo_examples import REQUEST_ROWS, write_demo_examples
from sdm.errors import InputError
from sdm.registry.pyfunc_io import parse_model_input
from tests._eval_helpers import make_checkpoint, make_prepared, tiny_config


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("demo-examples"), n=16)


def test_examples_are_the_val_maps_at_the_model_size(prepared: Path, tmp_path: Path) -> None:
    got = write_demo_examples(prepared, tmp_path / "examples", count=3, steps=2)
    val = PreparedDataset(prepared, "val")
    assert got.count == 3 and got.image_size == (32, 32)
    files = sorted(p.name for p in got.labels.iterdir())
    assert files == ["01.png", "02.png", "03.png"]
    index = json.loads((got.out / "examples.json").read_text())
    assert [e["id"] for e in index["examples"]] == val.ids[:3]
    for i, name in enumerate(files):
        with Image.open(got.labels / name) as im:
            assert im.mode in ("L", "I;16") and im.size == (32, 32)
            np.testing.assert_array_equal(np.asarray(im), val[i]["label"].numpy())
        assert got.instances is not None
        with Image.open(got.instances / name) as im:
            np.testing.assert_array_equal(np.asarray(im).astype(np.int64), val[i]["instance"].numpy())
    request = json.loads(got.request.read_text())
    assert request["params"] == {"seed": 0, "steps": 2}
    assert len(request["dataframe_records"]) == REQUEST_ROWS
    import pandas as pd

    labels, instances = parse_model_input(pd.DataFrame(request["dataframe_records"]), tiny_config())
    assert labels.shape == (REQUEST_ROWS, 32, 32) and instances is not None


def test_a_rerun_replaces_the_folder(prepared: Path, tmp_path: Path) -> None:
    write_demo_examples(prepared, tmp_path / "examples", count=3)
    write_demo_examples(prepared, tmp_path / "examples", count=1)
    assert sorted(p.name for p in (tmp_path / "examples" / "labels").iterdir()) == ["01.png"]


def test_bad_inputs_are_input_errors(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="count must be >= 1"):
        write_demo_examples(prepared, tmp_path / "e", count=0)
    with pytest.raises(InputError, match="no split 'test'"):
        write_demo_examples(prepared, tmp_path / "e", split="test")
    with pytest.raises(InputError, match="does not exist"):
        write_demo_examples(tmp_path / "nothing", tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_sdm_sample_takes_the_examples_as_they_are(prepared: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_demo_examples(prepared, "examples", count=2)
    make_checkpoint(tmp_path / "ckpt", tiny_config())
    r = CliRunner().invoke(app, ["sample", "--checkpoint", "ckpt", "--labels", "examples/labels/",
                                 "--instances", "examples/instances/", "--out", "samples/", "--steps", "2",
                                 "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "samples").glob("0*.png")) == ["01.png", "02.png"]


def test_printed_commands_name_sdms_store_relative_to_the_repo(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert store_for_shell(uri, cwd=tmp_path) == "sqlite:///mlflow/mlflow.db"
    assert store_for_shell(uri, cwd=tmp_path / "elsewhere") == uri
    assert store_for_shell("http://tracking:5000", cwd=tmp_path) == "http://tracking:5000"
    from sdm.demo_examples import DemoExamples

    ex = DemoExamples(out=Path("examples"), labels=Path("examples/labels"), instances=None,
                      request=Path("examples/request.json"), image_size=(32, 32), count=4)
    cmds = try_it_commands("sdm-toy", uri, ex)
    assert cmds["serve"].startswith("MLFLOW_TRACKING_URI=")
    assert "models:/sdm-toy@champion" in cmds["serve"] and "--port 5001" in cmds["serve"]
    assert cmds["request"].endswith("-d @examples/request.json") and ":5001/invocations" in cmds["request"]
    assert cmds["sample"] == "sdm sample --model models:/sdm-toy@champion --labels examples/labels/ --out samples/"


def test_a_folder_of_yours_named_examples_is_refused_not_replaced(prepared: Path, tmp_path: Path) -> None:
    mine = tmp_path / "examples"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a folder sdm made"):
        write_demo_examples(prepared, mine)
    assert (mine / "notes.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
