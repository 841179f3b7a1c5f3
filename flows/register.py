"""The registration task: log the model version, tag lineage, alias, promote. MLflow calls are retried."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from flows.retry import transient_only
from sdm.config import Config


@task(name="register", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)
def register_model(config: Config, checkpoint: str, metrics_file: str, promote: bool) -> dict[str, Any]:
    from sdm.registry.register import register_checkpoint

    logger = get_run_logger()
    result = register_checkpoint(checkpoint, metrics_file, config, promote=promote)
    decision = result.promotion.decision if result.promotion else "not asked"
    logger.info("registered %s version %s (aliases %s; promotion: %s)", result.name, result.version,
                result.aliases, decision)
    return {"name": result.name, "version": result.version, "model_uri": result.model_uri,
            "aliases": sorted(a for a, v in result.aliases.items() if str(v) == str(result.version)),
            "decision": decision, "reason": getattr(result.promotion, "reason", "")}
