"""The READMEs' commands run as written (issue 16): a command that stops working fails the suite.

``test_readme_block`` runs every shell block of README.md, data/README.md and mlflow/README.md,
in that order, in ONE copy of the repo (a fresh git repo with this checkout's files), the way a
newcomer follows them: ``make demo`` first, then each section's commands on what the earlier
ones made. Only params.yaml is swapped for tiny settings (few scenes, a small model, a few
steps) so the whole file takes minutes; every path, flag and name is the README's. The store is
the README's too (``sqlite:///mlflow/mlflow.db`` in the copy, via ``register.tracking_uri``), so
the ``mlflow`` CLI commands find what ``sdm`` wrote. Blocks marked skip in the README are reported
skipped with the marker's reason; servers (``mlflow models serve``) run in the background until
the last block. ``make demo`` / ``make test`` run their Makefile recipes (``sdm pipeline run`` /
``ruff check .``) instead of recursing into make and pytest (tests/_readme_harness.py).

``test_demo_summary_commands_run_as_printed`` runs the three commands ``make demo``'s summary
prints (sample, serve, request) exactly as printed, and checks that no stray store appeared.
The fast tests at the end check the harness itself: markers, and that a broken command fails.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sdm.config import resolve, to_dict
from tests._readme_harness import Block, MarkerError, Session, copy_repo, harness_env, parse_blocks, readme_blocks

BLOCKS = readme_blocks()

# The toy settings shrunk to seconds: the model's size (32 px) and class ids stay the README's.
TINY = [
    "data.synth.n=24", "data.val_fraction=0.25",
    "model.model_channels=32", "model.channel_mult=[1,2]", "model.attention_resolutions=[16]",
    "model.num_heads=1", "model.spade_hidden=16",
    "train.pretrain.steps=2", "train.finetune.steps=2", "train.batch_size=4",
    "train.checkpoint_every=2", "train.log_every=2", "train.sample_every=100",
    "evaluate.guidance_scales=[1.0,1.5]", "evaluate.steps=3", "evaluate.num_samples=4", "evaluate.repeats=2",
    "evaluate.steps_sweep=[ddim:3,dpmpp:3]",
    "evaluate.segmenter.steps=5", "evaluate.segmenter.batch_size=4", "evaluate.segmenter.width=8",
    "evaluate.min_fid_samples=10", "sample.steps=3", "sample.batch_size=4",
    "retrain.continue_steps=2",
    # `sdm distill` (README: Few-step sampling): every stage 2 steps; the README's --steps 8 from start_steps 64.
    "distill.guidance_train_steps=2", "distill.halving_train_steps=2",
    # The README's store, spelled relative: it resolves inside the copy (the sdm package lives elsewhere).
    "register.tracking_uri=sqlite:///mlflow/mlflow.db",
]


def tiny_params() -> dict:
    cfg = resolve(overrides=TINY, params=None)
    from sdm.model import SDMUNet

    SDMUNet(cfg.model)  # a model the settings cannot build fails here, not minutes later on a Ray worker
    params = to_dict(cfg)
    params.pop("preset")
    return params


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    root = copy_repo(tmp_path_factory.mktemp("readme") / "sdm", tiny_params())
    s = Session(root, harness_env())
    yield s
    s.stop_servers()


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block: Block, session: Session) -> None:
    if block.action == "skip":
        pytest.skip(f"{block.id}: {block.arg}")
    session.enter_file(block.file)
    result = session.start(block) if block.action == "background" else session.run(block)
    assert result.returncode == 0, f"{block.id} failed (exit {result.returncode}):\n{block.code}\n{result.output}"


SUMMARY_LINE = re.compile(r"^\s+(sample|serve|request)\s+: (.+)$", re.M)


@pytest.mark.slow
def test_demo_summary_commands_run_as_printed(session: Session) -> None:
    """After ``make demo``: its printed sample / serve / request commands work as printed, from the repo root."""
    demo = next((b for b in BLOCKS if "make demo" in b.code and b.action == "run"), None)
    assert demo is not None, "README.md has no runnable block with `make demo`"
    if demo.id not in session.outputs:  # run alone (-k): the demo first
        assert session.run(demo).returncode == 0
    printed = dict(SUMMARY_LINE.findall(session.outputs[demo.id]))
    assert set(printed) == {"sample", "serve", "request"}, session.outputs[demo.id]

    session.stop_servers()  # the READMEs' own server holds the port the printed one uses
    sample = session.run(Block("summary", 0, printed["sample"]))
    assert sample.returncode == 0, sample.output
    out = Path(shlex.split(printed["sample"])[shlex.split(printed["sample"]).index("--out") + 1])
    labels = sorted((session.root / "examples" / "labels").glob("*.png"))
    assert labels and sorted(p.name for p in (session.root / out).glob("*.png") if p.stem != "grid") == \
        [p.name for p in labels]

    port = re.search(r"--port (\d+)", printed["serve"]).group(1)
    served = session.start(Block("summary", 0, printed["serve"], "background", f"http://127.0.0.1:{port}/ping"))
    assert served.returncode == 0, served.output
    reply = session.run(Block("summary", 0, printed["request"]))
    assert reply.returncode == 0, reply.output
    images = json.loads(reply.output)["predictions"]
    size = yaml.safe_load((session.root / "params.yaml").read_text())["model"]["image_size"]
    request = json.loads((session.root / "examples" / "request.json").read_text())
    assert [len(images), len(images[0]), len(images[0][0]), len(images[0][0][0])] == \
        [len(request["dataframe_records"]), *size, 3]
    session.stop_servers()
    # One store: the mlflow CLI used sdm's, none appeared in the repo root.
    assert not (session.root / "mlflow.db").exists()
    assert (session.root / "mlflow" / "mlflow.db").is_file()


# --- the harness itself (fast) ---

def test_every_marker_names_a_known_action_and_a_reason() -> None:
    assert BLOCKS, "no shell blocks found in the READMEs"
    for block in BLOCKS:
        assert block.action in ("run", "skip", "background")
        assert block.action == "run" or block.arg


def test_markers_parse_and_bad_ones_are_errors() -> None:
    text = ("x\n\n```bash\nsdm config presets\n```\n<!-- readme-test: skip: needs the ADE20K download -->\n"
            "```bash\nsdm data validate --preset ade20k\n```\n```yaml\na: 1\n```\n"
            "<!-- readme-test: background: http://127.0.0.1:5001/ping -->\n```sh\nmlflow models serve\n```\n")
    blocks = parse_blocks(text, "R.md")
    assert [(b.line, b.action, b.arg) for b in blocks] == [
        (3, "run", ""), (7, "skip", "needs the ADE20K download"), (14, "background", "http://127.0.0.1:5001/ping")]
    with pytest.raises(MarkerError, match="R.md:1: readme-test skip needs a reason"):
        parse_blocks("<!-- readme-test: skip -->\n```bash\nls\n```\n", "R.md")
    with pytest.raises(MarkerError, match="unknown readme-test action 'ignore'"):
        parse_blocks("<!-- readme-test: ignore: x -->\n```bash\nls\n```\n", "R.md")
    with pytest.raises(MarkerError, match="malformed"):
        parse_blocks("<!-- readme-test skip x -->\n```bash\nls\n```\n", "R.md")


def test_a_broken_documented_command_fails(tmp_path: Path) -> None:
    """The README's own config block with one option renamed (as a stale README would have it) fails."""
    block = next(b for b in BLOCKS if "sdm config show --set" in b.code)
    session = Session(tmp_path, harness_env())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    assert session.run(block).returncode == 0
    broken = Block(block.file, block.line, block.code.replace("--set train.batch_size", "--override train.batch_size"))
    result = session.run(broken)
    assert result.returncode == 2 and "No such option: --override" in result.output
