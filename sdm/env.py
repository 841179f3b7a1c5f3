"""The quiet, offline environment, set in one place for the CLI and the tests.

Nothing downloads at run time and no tool phones home. Values already set by
the user win (``setdefault``), so a tracking server or Prefect API URL given in
the environment is respected.
"""

from __future__ import annotations

import os

QUIET_OFFLINE = {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "GIT_PYTHON_REFRESH": "quiet",
}


def apply_quiet_offline_env() -> None:
    """Set the quiet/offline variables unless the user already set them."""
    for key, value in QUIET_OFFLINE.items():
        if value != "":
            os.environ.setdefault(key, value)
