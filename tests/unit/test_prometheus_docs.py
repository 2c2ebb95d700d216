"""docs/prometheus: the scrape config and alert rules parse, and every metric they name is one
the processes export (so a renamed metric cannot leave a dead alert behind)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import app.core.metrics  # noqa: F401 - registers every metric

DOCS = Path(__file__).resolve().parents[2] / "docs" / "prometheus"
SUFFIXES = ("", "_total", "_created", "_bucket", "_count", "_sum")


def exported_names() -> set[str]:
    return {family.name + suffix for family in REGISTRY.collect() for suffix in SUFFIXES}


def test_alert_rules_name_exported_metrics_and_cover_the_issue() -> None:
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {rule["alert"] for rule in rules}
    for needed in ("TasktrackerCoverageStuck", "TasktrackerRowsParked", "TasktrackerQueueLag"):
        assert needed in names
    exported = exported_names()
    for rule in rules:
        assert {"expr", "for", "labels", "annotations"} <= set(rule), rule["alert"]
        used = set(re.findall(r"\btasktracker_[a-z_]+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)


def test_scrape_config_scrapes_the_api_with_a_token_and_the_workers() -> None:
    config = yaml.safe_load((DOCS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["tasktracker-api"]["metrics_path"] == "/metrics"
    assert jobs["tasktracker-api"]["authorization"]["type"] == "Bearer"
    assert jobs["tasktracker-worker"]["static_configs"][0]["targets"]
