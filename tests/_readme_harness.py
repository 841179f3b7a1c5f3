"""Run the shell blocks of the READMEs as a newcomer would: in order, in one copy of the repo.

What is collected: every fenced block opened with ```` ```bash ````, ```` ```sh ```` or
```` ```shell ```` in README.md, data/README.md and mlflow/README.md (other fences — yaml,
python, the plain ones showing output — are not commands). A block runs as written, as
one ``bash -e -o pipefail`` script, in the repo copy's root, unless the line before its
fence is a marker:

- ``<!-- readme-test: skip: <reason> -->``: not run (it needs a real dataset, a GPU, a
  cluster, a server that never returns); the test reports it skipped with the reason;
- ``<!-- readme-test: background: <url> -->``: a server: started in the background, ready
  when ``<url>`` answers; the blocks after it use it, and it is stopped after the last block.

A marker with another action, or a skip without a reason, is an error: nothing is ignored
silently. ``make`` inside a block is mapped to its Makefile recipe instead of recursing
into make (the venv is already set up): ``make demo`` -> ``sdm pipeline run``,
``make test`` -> ``ruff check .`` (its lint half; the suite it would run is this suite).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
READMES = ("README.md", "data/README.md", "mlflow/README.md")
SHELL_LANGS = ("bash", "sh", "shell")
ACTIONS = ("skip", "background")

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<action>[\w-]+)\s*(?::\s*(?P<arg>.*?))?\s*-->\s*$")

# `make` as a shell function: the recipes, without make's own setup step and without recursing into pytest.
MAKE_SHIM = """
make() {
  case "$*" in
    demo) sdm pipeline run ;;
    test) ruff check . ;;
    *) echo "readme harness: no mapping for 'make $*'" >&2; return 2 ;;
  esac
}
"""


class MarkerError(ValueError):
    """A ``readme-test`` marker the harness cannot follow (unknown action, skip without a reason)."""


@dataclass(frozen=True)
class Block:
    """One shell block: where it is, its text and what the harness does with it."""

    file: str  # relative to the repo root, e.g. "README.md"
    line: int  # 1-based line of the opening fence
    code: str
    action: str = "run"  # run | skip | background
    arg: str = ""  # the skip reason, or the background server's ready URL

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def parse_blocks(text: str, file: str) -> list[Block]:
    """The shell blocks of one markdown text, in order, with their markers applied."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang = m.group(2).lower()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        if lang in SHELL_LANGS:
            prev = i - 1
            while prev >= 0 and not lines[prev].strip():
                prev -= 1
            action, arg = "run", ""
            marker = _MARKER.match(lines[prev]) if prev >= 0 else None
            if prev >= 0 and "readme-test" in lines[prev] and marker is None:
                raise MarkerError(f"{file}:{prev + 1}: malformed readme-test marker: {lines[prev].strip()}")
            if marker:
                action, arg = marker.group("action"), (marker.group("arg") or "").strip()
                if action not in ACTIONS:
                    raise MarkerError(f"{file}:{prev + 1}: unknown readme-test action {action!r} "
                                      f"(one of {', '.join(ACTIONS)})")
                if not arg:
                    raise MarkerError(f"{file}:{prev + 1}: readme-test {action} needs "
                                      f"{'a reason' if action == 'skip' else 'a URL that answers when ready'}")
            blocks.append(Block(file, i + 1, "\n".join(lines[i + 1:end]) + "\n", action, arg))
        i = end + 1
    return blocks


def readme_blocks(root: Path = REPO) -> list[Block]:
    """Every shell block of the READMEs, README.md first (a newcomer's order)."""
    return [b for name in READMES for b in parse_blocks((root / name).read_text(), name)]


def harness_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment (temp homes of conftest.py) with the venv's tools first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "GIT_AUTHOR_NAME": "readme", "GIT_AUTHOR_EMAIL": "readme@example.com",
           "GIT_COMMITTER_NAME": "readme", "GIT_COMMITTER_EMAIL": "readme@example.com"}
    # The commands must find the store README names, not one a fixture chose.
    for key in ("MLFLOW_TRACKING_URI", "SDM_MLFLOW_ARTIFACTS", "RAY_ADDRESS", "PREFECT_API_URL"):
        env.pop(key, None)
    env.update(extra or {})
    return env


def copy_repo(dest: Path, params: dict | None = None) -> Path:
    """The files of this checkout (as they are now, edits and new files included) in ``dest``, a fresh git repo.

    ``params`` replaces params.yaml (tiny settings). ``dest``'s parent gets the DVC remote
    (``.dvc/config`` names ``../../sdm-dvc-remote``), so put ``dest`` in a folder of its own.
    """
    import yaml

    # Tracked and new (not ignored) files: other work in progress imports its new modules too.
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree, not yet committed
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = harness_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "readme copy"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    return dest


@dataclass
class Result:
    returncode: int
    output: str


@dataclass
class Session:
    """One repo copy the blocks run in, in order, and the servers they started."""

    root: Path
    env: dict[str, str]
    timeout: float = 900
    servers: list[subprocess.Popen] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    file: str = ""

    def enter_file(self, file: str) -> None:
        """A README's servers live until its last block: the next file starts with none (same ports)."""
        if file != self.file:
            self.stop_servers()
            self.file = file

    def script(self, code: str) -> str:
        return f"set -e -o pipefail\n{MAKE_SHIM}\n{code}"

    def run(self, block: Block) -> Result:
        """Run a ``run`` block to its end: exit status and stdout + stderr together."""
        proc = subprocess.run(["bash", "-c", self.script(block.code)], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=self.timeout)
        out = proc.stdout + proc.stderr
        self.outputs[block.id] = proc.stdout
        return Result(proc.returncode, out)

    def start(self, block: Block, ready_timeout: float = 240) -> Result:
        """Start a ``background`` block; returns once its URL answers (0) or it died / never answered (1)."""
        log = self.root.parent / f"server-{len(self.servers)}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(["bash", "-c", self.script(block.code)], cwd=self.root, env=self.env,
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.servers.append(proc)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return Result(1, f"exited with {proc.returncode} before {block.arg} answered:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(block.arg, timeout=2):
                    return Result(0, log.read_text())
            except urllib.error.HTTPError:
                return Result(0, log.read_text())  # it answered
            except OSError:
                time.sleep(1)
        return Result(1, f"{block.arg} did not answer within {ready_timeout:.0f} s:\n{log.read_text()}")

    def stop_servers(self) -> None:
        """Stop the servers this session started (their whole process groups), waiting for each."""
        for proc in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.servers.clear()
