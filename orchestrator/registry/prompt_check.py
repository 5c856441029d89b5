"""An ``MlflowClient`` that asks once per registered model whether it is a prompt, not on every call.

MLflow's client checks, before each registry write and several reads (a version's tags, its
description, the alias, a new version), that the name is a registered model and not a prompt
(``MlflowClient._raise_if_prompt``). The check reads the whole registered model: on a database
store, every version of it, so a registration of one version paid for all of them about ten
times over. A registered model cannot become a prompt, so the answer is kept per name once the
check passed; a name that failed it (a prompt, or no such model) is asked again next time.
"""

from __future__ import annotations

import threading

from mlflow import MlflowClient

__all__ = ["RegistryClient"]


class RegistryClient(MlflowClient):
    """``MlflowClient`` with the prompt check done once per registered model name."""

    def __init__(self, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        super().__init__(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self._not_prompts: set[str] = set()
        self._checked_lock = threading.Lock()

    def _raise_if_prompt(self, name: str) -> None:
        if name in self._not_prompts:
            return
        super()._raise_if_prompt(name)  # raises for a prompt (or a missing model): not kept
        with self._checked_lock:
            self._not_prompts.add(name)
