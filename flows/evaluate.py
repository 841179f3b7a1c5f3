"""The evaluation task, cached on the checkpoint's content: an unchanged checkpoint is not evaluated twice."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from sdm.config import Config, to_dict


def checkpoint_fingerprint(checkpoint: str | Path) -> str:
    """sha256 over the checkpoint's weights and config (what the evaluation depends on)."""
    h = hashlib.sha256()
    ckpt = Path(checkpoint)
    for name in ("model.safetensors", "ema.safetensors", "config.json"):
        path = ckpt / name
        if path.exists():
            h.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def evaluation_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    config: Config = parameters["config"]
    settings = json.dumps({"evaluate": to_dict(config.evaluate), "sample": to_dict(config.sample)}, sort_keys=True)
    parts = [checkpoint_fingerprint(parameters["checkpoint"]), parameters["data_version"],
             hashlib.sha256(settings.encode()).hexdigest(), str(Path(parameters["out"]).resolve())]
    return "evaluate-" + hashlib.sha256("|".join(parts).encode()).hexdigest()


@task(name="evaluate", cache_key_fn=evaluation_cache_key, persist_result=True)
def evaluate_checkpoint(config: Config, checkpoint: str, data: str, data_version: str, out: str) -> dict[str, Any]:
    from sdm.eval.runner import EvalRequest, run_evaluation

    logger = get_run_logger()
    req = EvalRequest(checkpoint=Path(checkpoint), data=Path(data), out=Path(out))
    return run_evaluation(req, config, log=logger.info)
