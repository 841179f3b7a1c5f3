"""Serve ``retrain`` on the schedule that prefect.yaml's ``retrain-nightly`` deployment declares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOYMENT = "retrain-nightly"


def deployment_spec(prefect_yaml: str | Path = "prefect.yaml", name: str = DEPLOYMENT) -> dict[str, Any]:
    """The named deployment of prefect.yaml (schedules, parameters): one source for serve and deploy."""
    path = Path(prefect_yaml)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no prefect.yaml here; run from the sdm checkout")
    data = yaml.safe_load(path.read_text()) or {}
    for dep in data.get("deployments") or []:
        if dep.get("name") == name:
            return dep
    raise ValueError(f"{path}: no deployment named {name!r}")


def serve(prefect_yaml: str | Path = "prefect.yaml", name: str = DEPLOYMENT) -> None:
    """Block, running ``retrain`` whenever its schedule fires (needs a Prefect server: PREFECT_API_URL)."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.retrain import retrain

    spec = deployment_spec(prefect_yaml, name)
    schedules = [CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC"))
                 for s in spec.get("schedules") or [] if s.get("active", True)]
    retrain.serve(name=name, schedules=schedules, parameters=spec.get("parameters") or {},
                  description=spec.get("description"))
