"""``sdm data checkout``: prepared data back from the project's DVC remote by its content hash.

A data version ``dvc:<md5 12>@<commit 12>`` names the prepared folder's DVC directory hash. ``dvc pull``
restores an output only through a .dvc file or a dvc.lock that names it, and a pipeline run on
uncommitted params leaves no commit that does; so the checkout writes its own: a throwaway DVC repo
(``dvc init --no-scm``) beside the output, configured with the project's default remote (``dvc config
--list``: its options, relative paths resolved by DVC), holding one generated ``data.dvc`` with the md5,
and pulls that. The full md5 comes from the caller (a training run's recorded dvc.lock entry), from
dvc.lock in the working tree or anywhere in git history, or from listing the remote under the prefix.

The restored folder is verified (every shard against manifest.json's sha256) before it is renamed into
place; ``--out`` is replaced only when it is missing, empty or prepared data sdm wrote
(``sdm.output_folders``), and a failure leaves nothing behind.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdm.errors import InputError

_HEX = re.compile(r"^[0-9a-f]{6,32}$")
_MD5_IN_TEXT = re.compile(r"\b([0-9a-f]{32})\.dir\b")
# How `dvc pull` says the remote (and the local cache) lack an object: the data is not there, not an outage.
_MISSING = re.compile(r"missing cache files|do not exist neither locally nor on remote|"
                      r"failed to pull data from the cloud", re.IGNORECASE)
PULL_DIR = "data"


class DataCheckoutError(InputError):
    """A data version that cannot be checked out (not DVC data, unknown, not in the remote); exit code 2."""


@dataclass
class Remote:
    """The project's default DVC remote: its name, URL and every option (``remote.<name>.<key>``)."""

    name: str
    url: str
    options: dict[str, str]


@dataclass
class CheckoutResult:
    path: Path
    md5: str  # with its ".dir" suffix
    remote: Remote
    found_by: str  # recorded | given | dvc.lock | git history | remote listing
    files: int


def parse_data_version(version: str) -> str:
    """``dvc:<hex>@<commit>`` / ``<hex>`` / ``<hex>.dir`` -> the lower-case hex prefix (6..32 digits).

    ``manifest:...`` versions name data DVC never tracked: an error saying so.
    """
    text = version.strip()
    if text.startswith("manifest:"):
        raise DataCheckoutError(f"data version {version!r}: a manifest hash, not DVC data (the prepared folder "
                                "was not the output dvc.lock recorded when it trained), so no DVC remote holds it")
    text = text.removeprefix("dvc:").split("@", 1)[0].removesuffix(".dir").lower()
    if not _HEX.match(text):
        raise DataCheckoutError(f"data version {version!r}: expected dvc:<md5>@<commit> (as `sdm data version` "
                                "prints and lineage.data_version records), an md5 (6 to 32 hex digits), "
                                "or models:/NAME/VERSION")
    return text


def _dvc(args: list[str], root: Path, timeout_s: float | None) -> str:
    from sdm.data.version import run_dvc

    return run_dvc(args, root, timeout_s=timeout_s, echo=False)


def default_remote(root: Path, timeout_s: float | None = 60) -> Remote:
    """The default remote of the DVC project ``root``, with its options as DVC resolves them."""
    from sdm.data.version import DataVersionError

    try:
        lines = _dvc(["config", "--list"], root, timeout_s).splitlines()
    except DataVersionError as e:
        raise DataCheckoutError(f"{root}: cannot read the DVC config: {e}") from None
    conf = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith(("WARNING", "ERROR")))
    name = conf.get("core.remote", "").strip()
    if not name:
        raise DataCheckoutError(f"{root}: the DVC project has no default remote (`dvc remote add -d NAME URL`); "
                                "the data can only come back from one")
    prefix = f"remote.{name}."
    options = {k[len(prefix):]: v for k, v in conf.items() if k.startswith(prefix)}
    if "url" not in options:
        raise DataCheckoutError(f"{root}: the default DVC remote {name!r} has no url")
    return Remote(name=name, url=options["url"], options=options)


def _matches(prefix: str, candidates: set[str]) -> set[str]:
    return {c for c in candidates if c.startswith(prefix)}


def md5s_in_lock_history(root: Path, prefix: str) -> set[str]:
    """Full md5s (no ``.dir``) starting with ``prefix`` in dvc.lock files of the work tree and git history."""
    found: set[str] = set()
    for lock in [root / "dvc.lock", *root.glob("*/**/dvc.lock")]:
        if lock.is_file() and ".dvc" not in lock.relative_to(root).parts:
            found |= _matches(prefix, set(_MD5_IN_TEXT.findall(lock.read_text(errors="replace"))))
    if not found:
        try:
            log = subprocess.run(["git", "log", "--all", "-p", "--format=", "--", "dvc.lock", "*/dvc.lock",
                                  "*.dvc"], cwd=root, capture_output=True, text=True, timeout=120, check=True)
        except (OSError, subprocess.SubprocessError):
            return found
        found |= _matches(prefix, set(_MD5_IN_TEXT.findall(log.stdout)))
    return found


def _remote_listing(repo: Path, prefix: str, timeout_s: float | None) -> set[str]:
    """Directory md5s in the remote starting with ``prefix`` (``files/md5/<2>/<30>.dir``: DVC 3's layout)."""
    from sdm.data.version import DataVersionError

    try:
        out = _dvc(["ls-url", f"remote://r/files/md5/{prefix[:2]}/"], repo, timeout_s)
    except DataVersionError:
        return set()  # no such folder: nothing there with this prefix
    names = {line.strip() for line in out.splitlines() if line.strip().endswith(".dir")}
    return _matches(prefix, {prefix[:2] + n.removesuffix(".dir") for n in names})


def _write_repo(repo: Path, remote: Remote, md5: str, entry: dict[str, Any] | None) -> None:
    """The throwaway DVC repo: the project's remote as ``r``, a copying cache, one ``data.dvc`` naming ``md5``."""
    import yaml
    from configobj import ConfigObj  # DVC's own config format (a dependency of dvc)

    conf = ConfigObj()
    conf.filename = str(repo / ".dvc" / "config")
    # A copying cache: the cache is deleted with this repo, so the data must not link into it.
    conf["core"] = {"no_scm": "True", "remote": "r", "analytics": "false"}
    conf['remote "r"'] = dict(remote.options)
    conf["cache"] = {"type": "reflink,copy"}
    conf.write()
    out: dict[str, Any] = {"md5": md5, "path": PULL_DIR, "hash": "md5"}
    for key in ("size", "nfiles"):
        if entry and entry.get(key) is not None:
            out[key] = entry[key]
    (repo / "data.dvc").write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False))


def checkout_data(version: str, out: str | Path, *, root: str | Path | None = None,
                  entry: dict[str, Any] | None = None, overwrite: bool = False, timeout_s: float | None = 600,
                  log: Callable[[str], Any] = print) -> CheckoutResult:
    """Restore the prepared data of ``version`` from the DVC remote of the project at ``root`` into ``out``.

    ``entry``: the recorded dvc.lock out entry (``md5`` with ``.dir``, ``nfiles``, ``size``) when the
    caller has it (a training run's ``reproduce/data.json``); else the md5 is looked up (module docstring).
    ``timeout_s`` bounds each DVC command. Raises :class:`DataCheckoutError` for a version that is not DVC
    data, unknown, ambiguous, or not held by the remote (naming the remote and the hash); a network
    failure is a :class:`sdm.data.version.DataVersionError` (an outage, not bad input).
    """
    from sdm.atomic import make_temp_dir, recover, replace_dir
    from sdm.data.manifest import read_manifest
    from sdm.data.shards import verify_shards
    from sdm.data.version import DataVersionError, find_dvc_root, run_dvc
    from sdm.output_folders import PREPARED, check_output_dir

    out = Path(out)
    check_output_dir(out, PREPARED, overwrite=overwrite)
    prefix = parse_data_version(entry["md5"] if entry and entry.get("md5") else version)
    project = Path(root) if root is not None else find_dvc_root(Path.cwd())
    if project is None:
        raise DataCheckoutError(f"{Path.cwd()} is not inside a DVC project (no .dvc folder): run the checkout "
                                "from the project whose remote holds the data")
    remote = default_remote(project)
    where = f"DVC remote {remote.name!r} ({remote.url})"
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    scratch = make_temp_dir(out)
    try:
        repo = scratch / "dvc"
        repo.mkdir()
        run_dvc(["init", "--no-scm", "-q"], repo, timeout_s=timeout_s, echo=False)
        _write_repo(repo, remote, "0" * 32 + ".dir", None)
        if len(prefix) == 32:
            found, how = {prefix}, ("recorded" if entry else "given")
        else:
            found, how = md5s_in_lock_history(project, prefix), "dvc.lock"
            if not found:
                found, how = _remote_listing(repo, prefix, timeout_s), "remote listing"
        if not found:
            raise DataCheckoutError(f"data version {version!r}: no prepared data with md5 {prefix}... in "
                                    f"{project}'s dvc.lock (work tree or git history) nor in the {where}")
        if len(found) > 1:
            raise DataCheckoutError(f"data version {version!r}: md5 prefix {prefix} is ambiguous ("
                                    f"{', '.join(sorted(found))}); give more digits")
        md5 = f"{found.pop()}.dir"
        _write_repo(repo, remote, md5, entry)
        log(f"[checkout] md5 {md5} (found by {how}); pulling from the {where}")
        try:
            run_dvc(["pull", "data.dvc"], repo, timeout_s=timeout_s, echo=False)
        except DataVersionError as e:
            if not e.transient and _MISSING.search(str(e)):
                raise DataCheckoutError(f"data version {version!r}: the {where} does not hold md5 {md5} (was it "
                                        "pushed? `sdm data version` / `dvc push` on the machine that prepared "
                                        "it); nothing was written") from None
            raise
        data = repo / PULL_DIR
        manifest = read_manifest(data)
        verify_shards(data, manifest)  # the bytes the manifest names, before anything is renamed into place
        files = sum(1 for p in data.rglob("*") if p.is_file())
        check_output_dir(out, PREPARED, overwrite=overwrite)
        replace_dir(data, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"[checkout] restored {files} file(s) of {md5} into {out}")
    return CheckoutResult(path=out, md5=md5, remote=remote, found_by=how, files=files)
