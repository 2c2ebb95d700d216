"""A taskiq middleware counting task runs by name and outcome, with their durations."""

from __future__ import annotations

from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult

from app.core.metrics import TASK_SECONDS, TASKS


class TaskMetricsMiddleware(TaskiqMiddleware):
    """After each run: TASKS and TASK_SECONDS by task name and outcome (ok or error)."""

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        outcome = "error" if result.is_err else "ok"
        TASKS.labels(message.task_name, outcome).inc()
        TASK_SECONDS.labels(message.task_name, outcome).observe(result.execution_time)
