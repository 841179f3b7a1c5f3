"""The ``reproduce/`` record of a training run: everything ``sdm reproduce`` needs to train it again.

Written by ``sdm.train.launch.train`` before any worker starts, into ``<run_dir>/reproduce/`` (a temp
folder renamed into place) and uploaded to the run's MLflow artifacts under ``reproduce/`` (best-effort,
like the rest of the tracking). Files (names in mlflow/README.md):

- ``config.yaml``: the resolved config the run trains with (absolute paths, workers and use_gpu applied);
- ``data.json``: the dvc.lock out entry of the prepared data (``md5`` with its ``.dir`` suffix,
  ``nfiles``, ``size``, ``path``, ``stage``) and the data version, or ``{"dvc_tracked": false, "reason"}``
  when the folder is not the output DVC recorded (then no DVC remote can give it back);
- ``code.json``: the sdm checkout's git commit and dirty flag, the sdm ``code_hash``
  (``sdm.registry.fingerprint``), ``"diff": "code.diff"`` when the tree was dirty, and ``untracked``: the
  sdm ``.py`` files git does not track (in the code hash, in no diff);
- ``code.diff``: ``git diff --binary HEAD`` of the tracked files (only when dirty): ``git apply`` restores them;
- ``run.json``: how it ran: ``mode`` (local | ray), ``workers``, ``use_gpu``, ``phases``, ``run_name``,
  ``init_from``, and ``machine``: the resolved precision, torch version, device type and device (CPU) model.
- ``resumes.json`` (only when it happened): each resume that ran on other code or other run settings than
  the part before it: the checkpoint it resumed from, its code.json and run.json fields (a dirty tree's diff
  as ``resume-<n>.diff``). The files above keep describing the start: a resume never rewrites them.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import yaml

RECORD_DIR = "reproduce"
CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
CODE_FILE = "code.json"
DIFF_FILE = "code.diff"
RUN_FILE = "run.json"
RESUMES_FILE = "resumes.json"
FILES = (CONFIG_FILE, DATA_FILE, CODE_FILE, DIFF_FILE, RUN_FILE)
# What a resume compares with the part before it: other values here make the run's weights depend on both.
_RESUME_CODE_KEYS = ("code_hash",)
_RESUME_RUN_KEYS = ("mode", "workers", "use_gpu", "machine")

# The machine facts that decide whether two runs must give the same bits (README: Reproducing a model).
MACHINE_KEYS = ("device", "device_name", "torch", "precision")


def data_record(prepared_dir: str | Path, data_version: str) -> dict[str, Any]:
    """The dvc.lock out entry of ``prepared_dir`` (+ the data version), or a "not DVC-tracked" record.

    The entry counts only while the folder still matches what dvc.lock recorded (the data version
    says ``dvc:``); a folder that was changed or never went through ``dvc repro`` is not in any remote.
    """
    from sdm.data.version import find_dvc_root, lock_entry

    prepared_dir = Path(prepared_dir)
    if not data_version.startswith("dvc:"):
        return {"dvc_tracked": False, "data_version": data_version, "prepared": str(prepared_dir),
                "reason": f"{prepared_dir} is not the output dvc.lock records (data version {data_version}): "
                          "it was not prepared by `dvc repro` or changed since, so no DVC remote holds it"}
    root = find_dvc_root(prepared_dir)
    entry = lock_entry(prepared_dir, root) if root else None
    if not entry or not entry.get("md5"):
        return {"dvc_tracked": False, "data_version": data_version, "prepared": str(prepared_dir),
                "reason": f"no dvc.lock entry for {prepared_dir} any more"}
    return {"dvc_tracked": True, "data_version": data_version, "md5": str(entry["md5"]),
            "nfiles": entry.get("nfiles"), "size": entry.get("size"), "path": str(entry["path"]),
            "stage": entry["stage"], "dvc_root": str(root), "hash": str(entry.get("hash", "md5"))}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="surrogateescape")


def code_record() -> tuple[dict[str, Any], str | None]:
    """(code.json, the diff text or None): the sdm checkout's commit, dirty flag, code hash, and its diff."""
    from sdm.registry.fingerprint import code_hash
    from sdm.registry.lineage import git_commit, git_dirty
    from sdm.tracking import repo_root

    root = repo_root()
    dirty = git_dirty(root)
    diff = _git(["diff", "--binary", "HEAD"], root) if dirty == "true" else None
    # Untracked sources count in code_hash but are in no diff: listed, so a mismatch can say what is missing.
    untracked = _git(["ls-files", "--others", "--exclude-standard", "--", "sdm"], root)
    doc = {"git_commit": git_commit(root), "git_dirty": dirty, "code_hash": code_hash(), "repo": str(root),
           "diff": DIFF_FILE if diff else None,
           "untracked": [f for f in (untracked or "").splitlines() if f.endswith(".py")]}
    return doc, diff


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_record(use_gpu: bool, precision: str) -> dict[str, str]:
    """This machine as training sees it: device type, device model, torch version, resolved precision.

    With ``use_gpu`` on Ray the driver may have no GPU of its own: the device model is then "unknown".
    """
    import torch

    from sdm.precision import resolve_precision

    device = "cuda" if use_gpu else "cpu"
    if use_gpu:
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unknown"
        resolved = resolve_precision(precision, "cuda") if torch.cuda.is_available() else f"{precision} (unresolved)"
    else:
        name = _cpu_model()
        resolved = resolve_precision(precision, "cpu")
    return {"device": device, "device_name": name, "torch": torch.__version__, "precision": resolved,
            "python": platform.python_version(), "platform": platform.platform()}


def same_machine_kind(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two ``machine`` records are the same kind (``MACHINE_KEYS`` equal): same bits expected."""
    return all(str(a.get(k)) == str(b.get(k)) for k in MACHINE_KEYS)


def run_record(*, local: bool, workers: int, use_gpu: bool, phases: list[str], run_name: str,
               precision: str, init_from: str | None) -> dict[str, Any]:
    return {"mode": "local" if local else "ray", "workers": workers, "use_gpu": use_gpu, "phases": list(phases),
            "run_name": run_name, "init_from": init_from, "machine": machine_record(use_gpu, precision)}


def write_record(run_dir: str | Path, config_yaml: str, data: dict[str, Any], run: dict[str, Any]) -> Path:
    """Write ``<run_dir>/reproduce/`` whole (temp folder renamed into place); returns the folder."""
    from sdm.atomic import atomic_dir

    target = Path(run_dir) / RECORD_DIR
    code, diff = code_record()
    with atomic_dir(target) as tmp:
        (tmp / CONFIG_FILE).write_text(config_yaml)
        (tmp / DATA_FILE).write_text(json.dumps(data, indent=1) + "\n")
        (tmp / CODE_FILE).write_text(json.dumps(code, indent=1) + "\n")
        if diff:
            (tmp / DIFF_FILE).write_bytes(diff.encode(errors="surrogateescape"))
        (tmp / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")
    return target


def read_resumes(folder: str | Path) -> list[dict[str, Any]]:
    """The entries of ``resumes.json`` in a record folder ([] when the run was never resumed differently)."""
    path = Path(folder) / RESUMES_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def record_resume(run_dir: str | Path, checkpoint: str, run: dict[str, Any]) -> Path:
    """A resume of the run in ``run_dir`` from ``checkpoint`` with ``run`` (a ``run_record``): the start's
    record stays; when the code (code_hash) or how it runs (mode, workers, GPU, machine) differs from the part
    before (the last entry of resumes.json, else the start), an entry is appended to resumes.json. Returns the
    record folder."""
    from sdm.atomic import write_file

    target = Path(run_dir) / RECORD_DIR
    resumes = read_resumes(target)
    before = resumes[-1] if resumes else {**json.loads((target / CODE_FILE).read_text()),
                                          **json.loads((target / RUN_FILE).read_text())}
    code, diff = code_record()
    if all(code.get(k) == before.get(k) for k in _RESUME_CODE_KEYS) and \
            all(run.get(k) == before.get(k) for k in _RESUME_RUN_KEYS):
        return target
    if diff:
        code["diff"] = f"resume-{len(resumes) + 1}.diff"
        write_file(target / code["diff"], diff.encode(errors="surrogateescape"))
    resumes.append({"from_checkpoint": checkpoint, **code, **run})
    write_file(target / RESUMES_FILE, (json.dumps(resumes, indent=1) + "\n").encode())
    return target


def read_record(folder: str | Path) -> dict[str, Any]:
    """``{"config": dict, "data": ..., "code": ..., "run": ..., "diff_path": Path | None, "resumes": list}`` of
    a record folder.

    Raises FileNotFoundError naming the folder and the missing file.
    """
    folder = Path(folder)
    for name in (CONFIG_FILE, DATA_FILE, CODE_FILE, RUN_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name} (a reproduce/ record has {', '.join(FILES[:-2])}, "
                                    f"{RUN_FILE})")
    code = json.loads((folder / CODE_FILE).read_text())
    diff = folder / DIFF_FILE if code.get("diff") and (folder / DIFF_FILE).is_file() else None
    return {"config": yaml.safe_load((folder / CONFIG_FILE).read_text()) or {},
            "data": json.loads((folder / DATA_FILE).read_text()), "code": code,
            "run": json.loads((folder / RUN_FILE).read_text()), "diff_path": diff, "resumes": read_resumes(folder)}


def record_run(run_dir: str | Path, config: Any, data_version: str, *, local: bool, phases: list[str],
               run_name: str, init_from: str | None, resume_from: str | None = None) -> Path:
    """The record of a training run about to start with ``config`` (``sdm.config.Config``, workers and
    use_gpu resolved) on data ``data_version``: written to ``<run_dir>/reproduce/``; returns that folder.

    ``resume_from`` (the checkpoint a resume starts from) with a record already there: ``record_resume``."""
    from sdm.config import dump_yaml

    tc = config.train
    run = run_record(local=local, workers=tc.workers, use_gpu=tc.use_gpu, phases=phases, run_name=run_name,
                     precision=tc.precision, init_from=init_from)
    if resume_from is not None and (Path(run_dir) / RECORD_DIR / CODE_FILE).is_file():
        return record_resume(run_dir, resume_from, run)
    return write_record(run_dir, dump_yaml(config), data_record(config.data.prepared, data_version), run)
