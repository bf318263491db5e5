"""Experiment tracking (config group `tracking`): MLflow on SQLite by default.

Example:
    >>> check_tracking({"enabled": False}, "tracking")["experiment"]
    'cnnlab'
"""

from __future__ import annotations

from cnnlab.fields import Field, boolean, check_fields, optional, string

TRACKING_FIELDS = {
    "enabled": Field(boolean, True),
    "uri": Field(optional(string), None),
    "experiment": Field(string, "cnnlab"),
    "run_name": Field(optional(string), None),
    "log_model": Field(boolean, True),
}


def check_tracking(cfg, path: str = "tracking") -> dict:
    return check_fields(cfg, TRACKING_FIELDS, path)
