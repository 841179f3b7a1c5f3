"""``sdm reproduce models:/NAME/V``: train a registered version again from its record and compare the weights.

1. The version's tags and its training run's ``reproduce/`` record (:mod:`sdm.reproduce.version`).
2. The code: this checkout's sdm ``code_hash`` must equal the recorded one; otherwise nothing is trained
   and the error gives the commands that re-create the recorded code (``git checkout <commit>``, then
   ``git apply <the downloaded code.diff>`` when the tree was dirty).
3. The data: checked out from the DVC remote by its recorded md5 (:mod:`sdm.reproduce.checkout`).
4. Training with the recorded config, run name, phases, workers, GPU use, local or Ray, and starting
   point; storage under ``--out`` (no MLflow run: a reproduction is not a new model).
5. The sha256 of the new EMA weights against the version's ``sdm.checkpoint_sha256``. Training is
   deterministic on one kind of machine (device, device model, torch version, resolved precision: the
   record's ``machine``), so there a difference is a failure; on another kind the bits may differ, and
   the version's figures are printed beside a fresh evaluation of the new weights.

``--out`` is written whole (temp folder renamed into place, marker kind ``reproduction``): ``data/``,
``runs/<run name>/`` (its ``final/`` is the reproduced checkpoint), ``evaluation/`` (other machine kind
only) and ``report.json``. Any error leaves no ``--out``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdm.errors import InputError
from sdm.reproduce.record import MACHINE_KEYS, RECORD_DIR, machine_record, same_machine_kind

if TYPE_CHECKING:
    from sdm.config import Config
    from sdm.reproduce.version import VersionRecord

REPRODUCTION = "reproduction"  # the --out marker's kind (sdm.output_folders)
REPORT = "report.json"


class CodeMismatchError(InputError):
    """This checkout's code is not the code that trained the version; the message has the commands."""


class NotReproducibleError(InputError):
    """A version whose record lacks something re-creation needs (its weights hash, DVC data, its start)."""


@dataclass
class ReproduceResult:
    """What ``sdm reproduce`` found: the hashes, the machine kinds, and (other kind) the figures."""

    uri: str
    out: Path
    checkpoint: Path
    expected_sha256: str
    sha256: str
    recorded_machine: dict[str, Any]
    machine: dict[str, Any]
    figures: dict[str, tuple[str | None, Any]] = field(default_factory=dict)  # metric -> (version, new)

    @property
    def identical(self) -> bool:
        return self.sha256 == self.expected_sha256

    @property
    def same_machine(self) -> bool:
        return same_machine_kind(self.recorded_machine, self.machine)

    @property
    def exit_code(self) -> int:
        """0: identical, or another kind of machine (the figures tell); 1: different bits on the same kind."""
        return 0 if self.identical or not self.same_machine else 1

    def summary(self) -> str:
        lines = [f"reproduced {self.uri} into {self.checkpoint}",
                 f"  EMA weights sha256: recorded {self.expected_sha256}",
                 f"                      now      {self.sha256}"]
        kind = ", ".join(f"{k} {self.machine.get(k)}" for k in MACHINE_KEYS)
        if self.identical:
            lines.append(f"identical: the same weights, bit for bit ({kind})")
        elif self.same_machine:
            lines.append(f"DIFFERENT weights on the same kind of machine ({kind}): training did not reproduce")
        else:
            was = ", ".join(f"{k} {self.recorded_machine.get(k)}" for k in MACHINE_KEYS
                            if str(self.recorded_machine.get(k)) != str(self.machine.get(k)))
            lines.append(f"different weights on another kind of machine (recorded: {was}); the figures:")
            lines.append("| metric | registered | reproduced |")
            lines.append("|---|---|---|")
            lines += [f"| {k} | {a if a is not None else '-'} | {_fmt(b)} |" for k, (a, b) in self.figures.items()]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else ("-" if value is None else str(value))


def check_code(rec: VersionRecord, keep_dir: Path | None = None) -> None:
    """Refuse (CodeMismatchError) unless this checkout's sdm code_hash is the recorded one.

    The recorded diff is copied to ``keep_dir`` (default: a new temp folder; never ``--out``) so the
    printed ``git apply`` works after this process ends.
    """
    import shutil

    from sdm.registry.fingerprint import code_hash
    from sdm.registry.lineage import git_dirty
    from sdm.tracking import repo_root

    code = rec.record["code"]
    recorded, current = str(code.get("code_hash", "")), code_hash()
    if recorded == current:
        return
    commit = code.get("git_commit", "unknown")
    steps = [f"git checkout {commit}"]
    if rec.record["diff_path"] is not None:
        keep_dir = keep_dir or Path(tempfile.mkdtemp(prefix="sdm-reproduce-code-"))
        keep_dir.mkdir(parents=True, exist_ok=True)
        diff = Path(shutil.copy(rec.record["diff_path"], keep_dir / "code.diff"))
        steps.append(f"git apply {diff}")
    elif code.get("git_dirty") == "true":
        steps.append("# the tree was dirty but no code.diff was recorded: the exact code cannot be re-created")
    if code.get("untracked"):
        steps.append(f"# and these files, untracked when it trained (in no diff): {', '.join(code['untracked'])}")
    here = repo_root()
    note = " (commit or stash your own changes first)" if git_dirty(here) == "true" else ""
    raise CodeMismatchError(
        f"{rec.uri}: this checkout's code is not the code that trained it (sdm code_hash {recorded[:12]} "
        f"recorded, {current[:12]} here); nothing was trained. Re-create that code in {here}{note}, then run "
        f"`sdm reproduce {rec.uri}` again:\n  " + "\n  ".join(steps))


def _phase(phases: list[str], config: Config) -> str | None:
    if list(phases) == list(config.train.phases):
        return None
    return phases[0] if len(phases) == 1 else "all"


def _start_from(rec: VersionRecord, tmp: Path, config: Config,
                log: Callable[[str], Any]) -> tuple[Path | None, str | None]:
    """(init_from directory, its label) of the recorded run: a models:/ URI is downloaded again."""
    init = rec.record["run"].get("init_from")
    if not init:
        return None, None
    if str(init).startswith("models:/"):
        from sdm.registry.model_uri import checkpoint_from_registry

        log(f"[reproduce] the run started from {init}: downloading it")
        return checkpoint_from_registry(str(init), tmp / "init", config, flag="init_from").path, str(init)
    if (Path(init) / "config.json").is_file():
        return Path(init), None
    raise NotReproducibleError(f"{rec.uri}: its training run started from {init}, which is gone; the weights it "
                               "started from cannot be recovered")


def _figures(rec: VersionRecord, metrics: dict[str, Any]) -> dict[str, tuple[str | None, Any]]:
    """metric -> (the version's figure, the new one): every figure of either (None where one has none)."""
    from sdm.tracking import metric_key

    out: dict[str, tuple[str | None, Any]] = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = (rec.tags.get(f"metrics.{metric_key(key)}"), value)
    shown = {f"metrics.{metric_key(k)}" for k in out}
    for tag, value in sorted(rec.tags.items()):
        if tag.startswith("metrics.") and tag not in shown:  # a figure the new evaluation did not produce
            out[tag.removeprefix("metrics.").replace("_at_", "@")] = (value, None)
    return out


def reproduce(uri: str, out: str | Path, config: Config | None = None, *, overwrite: bool = False,
              keep_dir: str | Path | None = None, log: Callable[[str], Any] = print) -> ReproduceResult:
    """Re-create the version ``uri`` into ``out`` (module docstring); ``config`` gives the tracking store.

    ``keep_dir``: where a code mismatch leaves the recorded code.diff (default: a new temp folder).
    Raises an InputError (ModelUriError, NoRecordError, CodeMismatchError, DataCheckoutError,
    NotReproducibleError, OutputFolderError) for what cannot be reproduced, before ``out`` exists.
    """
    from sdm.atomic import atomic_dir
    from sdm.config import from_dict
    from sdm.data.version import find_dvc_root
    from sdm.output_folders import check_output_dir
    from sdm.registry.lineage import CHECKPOINT_SHA256_TAG, checkpoint_sha256
    from sdm.reproduce.checkout import checkout_data
    from sdm.reproduce.version import version_record
    from sdm.train import train

    out = Path(out).absolute()  # Ray storage and the trainer resolve paths; relative_to needs one form
    check_output_dir(out, REPRODUCTION, overwrite=overwrite)
    with tempfile.TemporaryDirectory(prefix="sdm-reproduce-") as scratch:
        rec = version_record(uri, scratch, config, flag="MODEL")
        expected = rec.tags.get(CHECKPOINT_SHA256_TAG)
        if not expected:
            raise NotReproducibleError(f"{uri}: the version has no {CHECKPOINT_SHA256_TAG} tag to compare with")
        check_code(rec, Path(keep_dir) if keep_dir else None)
        data = rec.record["data"]
        if not data.get("dvc_tracked"):
            raise NotReproducibleError(f"{uri}: its training data cannot be restored: {data.get('reason')}")
        root = find_dvc_root(Path.cwd())
        if root is None and Path(str(data.get("dvc_root"))).is_dir():
            root = Path(data["dvc_root"])
        run = rec.record["run"]
        log(f"[reproduce] {uri} (v{rec.version} of {rec.name}): run {run['run_name']}, {run['mode']} with "
            f"{run['workers']} worker(s){', GPU' if run['use_gpu'] else ''}; record from the {rec.source}")
        resumes = rec.record.get("resumes") or []
        if resumes:
            parts = "; ".join(f"from {r.get('from_checkpoint')}: code {str(r.get('code_hash'))[:12]}, {r.get('mode')} "
                              f"with {r.get('workers')} worker(s)" for r in resumes)
            log(f"[reproduce] note: the run was resumed on other code or settings than it started with ({parts}; "
                f"{RECORD_DIR}/resumes.json). It is re-created straight through with the code and settings it "
                "started with, so its weights may differ from the version's")
        marker = {"model": uri, "version": rec.version, "data": data["md5"]}
        with atomic_dir(out, kind=REPRODUCTION, overwrite=overwrite, marker=marker) as tmp:
            checkout_data(data["data_version"], tmp / "data", root=root, entry=data, log=log)
            recorded = from_dict(rec.record["config"])
            cfg = dataclasses.replace(
                recorded, data=dataclasses.replace(recorded.data, prepared=str(tmp / "data")),
                train=dataclasses.replace(recorded.train, storage_path=str(tmp / "runs")))
            init_from, init_label = _start_from(rec, tmp, config or cfg, log)
            trained = train(cfg, run_name=run["run_name"], workers=run["workers"], use_gpu=run["use_gpu"],
                            local=run["mode"] == "local", phase=_phase(run["phases"], cfg), init_from=init_from,
                            init_label=init_label, log_mlflow=False, echo=log)
            sha256 = checkpoint_sha256(trained.final_dir)
            machine = machine_record(bool(run["use_gpu"]), cfg.train.precision)
            final = out / trained.final_dir.resolve().relative_to(tmp.resolve())
            result = ReproduceResult(uri=uri, out=out, checkpoint=final,
                                     expected_sha256=expected, sha256=sha256,
                                     recorded_machine=run.get("machine") or {}, machine=machine)
            if not result.identical and not result.same_machine:
                from sdm.eval.runner import EvalRequest, run_evaluation

                log("[reproduce] another kind of machine: evaluating the reproduced weights")
                metrics = run_evaluation(EvalRequest(checkpoint=trained.final_dir, data=tmp / "data",
                                                     out=tmp / "evaluation", log_mlflow=False, workers=1), cfg, log)
                result.figures = _figures(rec, metrics)
            report = {"model": uri, "name": rec.name, "version": rec.version, "identical": result.identical,
                      "same_machine_kind": result.same_machine, "expected_sha256": expected, "sha256": sha256,
                      "recorded_machine": result.recorded_machine, "machine": machine, "data_md5": data["md5"],
                      "resumed_differently": len(resumes),
                      "figures": {k: list(v) for k, v in result.figures.items()}}
            (tmp / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    return result
