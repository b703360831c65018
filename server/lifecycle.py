"""Which versions a server holds, kept in step with the repository.

Each pass compares the repository with the version policy: a version that
should be served is loaded and warmed up off the event loop, then swapped in;
only then is a version that should no longer be served taken out of the
registry, and retired once the requests it accepted have finished. A version
that fails to load or warm up is refused with a log line, never retried, and the
versions already serving go on; under the `latest` policy the newest version
that loads is served.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from camserve.export import repository

from .batcher import BatchingOptions
from .models import Registry, ServedModel

log = logging.getLogger("camserve.lifecycle")

RETIRE_GRACE = 1.0  # seconds for calls that picked the old version just before the swap


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    versions: tuple[int, ...] = ()

    def choose(self, available: list[int]) -> set[int]:
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return set(available) & set(self.versions)
        return {max(available)} if available else set()


class ModelManager:
    def __init__(self, repo: Path, names, policy: VersionPolicy, registry: Registry, device: str, batching: BatchingOptions, metrics=None):
        self.repo = Path(repo)
        self.names = names
        self.policy = policy
        self.registry = registry
        self.device = device
        self.batching = batching
        self.metrics = metrics
        self.refused: set[tuple[str, int]] = set()
        self._retiring: set[asyncio.Task] = set()

    def _model_names(self) -> list[str]:
        if not self.repo.is_dir():
            raise FileNotFoundError(f"model repository {self.repo} does not exist")
        return self.names or sorted(p.name for p in self.repo.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def sync(self):
        """One pass over the repository."""
        for name in self._model_names():
            available = [v for v in repository.versions(self.repo, name) if (name, v) not in self.refused]
            loaded = set(self.registry.versions.get(name, {}))
            wanted = self.policy.choose(available)
            for version in sorted(wanted - loaded, reverse=True):
                if await self._load(name, version) or self.policy.kind != "latest" or loaded:
                    continue
                # The newest failed and nothing serves this model yet: fall back to the newest that loads.
                for older in sorted(set(available) - {version}, reverse=True):
                    if await self._load(name, older):
                        break
            current = set(self.registry.versions.get(name, {}))
            keep = self.policy.choose(sorted(current)) if self.policy.kind == "latest" else wanted
            for version in current - keep:
                self._retire(self.registry.versions[name][version])

    async def _load(self, name: str, version: int) -> bool:
        path = repository.version_dir(self.repo, name, version)
        loop = asyncio.get_running_loop()
        try:
            log.info("loading %s version %d from %s", name, version, path)
            # Loading and XLA compiles block for seconds: off the event loop, so calls go on meanwhile.
            model = await loop.run_in_executor(None, ServedModel, path, self.device, self.batching, self.metrics)
            await loop.run_in_executor(None, model.warm_up, log.info)
        except Exception as err:  # noqa: BLE001 - any broken artifact is refused, never served
            self.refused.add((name, version))
            log.error("refused %s version %d: %s: %s", name, version, type(err).__name__, err)
            return False
        model.batcher.start()
        self.registry.add(model)
        log.info("serving %s version %d on %s", name, version, self.device)
        return True

    def _retire(self, model: ServedModel):
        self.registry.remove(model)
        log.info("retiring %s version %d after its accepted requests", model.name, model.version)
        task = asyncio.create_task(self._finish(model))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _finish(self, model: ServedModel):
        await asyncio.sleep(RETIRE_GRACE)
        await model.batcher.drained()
        await model.batcher.stop()
        await asyncio.get_running_loop().run_in_executor(None, model.close)
        log.info("retired %s version %d", model.name, model.version)

    async def watch(self, interval: float):
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - a bad pass (repository unreadable) must not stop the watcher
                log.exception("repository pass failed; trying again in %.0fs", interval)

    async def close(self):
        for model in self.registry.all():
            await model.batcher.stop()
            model.close()
        await asyncio.gather(*self._retiring, return_exceptions=True)
