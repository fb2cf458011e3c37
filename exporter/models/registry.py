"""The task registry: each task module registers its builder ``spec -> nn.Module`` by task name."""

from __future__ import annotations

from typing import Callable

TASK_BUILDERS: dict[str, Callable] = {}


def register_task(name: str):
    def deco(fn):
        TASK_BUILDERS[name] = fn
        return fn

    return deco
