"""Which versions a server holds, kept in step with what is on disk.

Each pass, for every model of its sources (sources.py: the repository's folders
or the --model names, one --model-base-path, or a models.config's list; and any
model still loaded whose folder has gone):
- its config.json is read again when it changed (config.py); a bad file
  keeps the last good configuration, and versions loaded under an older
  configuration are loaded again under the new one and swapped;
- the versions present, minus those refused for their current contents, go
  through the version policy; those it wants that are not loaded are loaded and
  warmed up off the event loop, newest first, and swapped in; under `latest`,
  when one of the newest fails, the newest older one that loads serves instead;
- only then are the loaded versions it no longer wants taken out and retired
  after the requests they accepted. Deleting the newest version so rolls back:
  the previous one is loaded first, then the deleted one retired;
- a model whose folder is gone or lists no versions is left alone until it has
  stayed so for EMPTY_PASSES passes (a sync in progress), then unloaded.
A refused version is tried again once its folder's contents or its model's
configuration change, and no sooner than its backoff (doubling from
RETRY_BACKOFF up to MAX_BACKOFF).
Every version's state is kept in the registry, logged when it changes, and
exported as a metric.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from camserve.export import repository

from ..ops import heap
from ..ops.observer import Observer
from . import config as model_config
from .config import ConfigError, ModelConfig
from .registry import AVAILABLE, END, LOADING, STATES, UNAVAILABLE, Registry, VersionState
from .served import ServedModel
from .sources import ModelSource

log = logging.getLogger("camserve.lifecycle")

RETIRE_GRACE = 1.0  # seconds for calls that picked the old version just before the swap
EMPTY_PASSES = 3
RETRY_BACKOFF, MAX_BACKOFF = 1.0, 300.0


def contents(folder: Path):
    """What tells a changed version folder from an unchanged one."""
    try:
        return tuple(
            sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())
        )
    except OSError:  # changing while we look: it will differ next time
        return None


@dataclass
class Refusal:
    contents: object
    config: ModelConfig
    retry_at: float
    backoff: float


@dataclass
class _Config:
    stamp: object
    config: ModelConfig | None  # None: no good configuration yet


def _loads_alike(loaded: ModelConfig, config: ModelConfig) -> bool:
    """Whether a version loaded under `loaded` is what `config` loads: all of it but the
    version policy, which says only which versions to serve."""
    return replace(loaded, policy=config.policy) == config


def _current(model: ServedModel, source: ModelSource, config: ModelConfig) -> bool:
    """Whether a loaded version is the one `source` and `config` would load now: from its
    folder (a models.config read again may move the model) and alike."""
    return model.path == source.base_path / str(model.version) and _loads_alike(model.config, config)


class ModelManager:
    def __init__(self, sources, defaults: ModelConfig, registry: Registry, device: str, observer: Observer):
        """`sources`: sources.RepoSources or FixedSources, asked for the models each pass."""
        self.sources = sources
        self._sources: dict[str, ModelSource] = {}  # every model seen, so one whose folder went is still known
        self.defaults = defaults
        self.registry = registry
        self.device = device
        self.observer = observer
        self.refused: dict[tuple[str, int], Refusal] = {}
        self._configs: dict[str, _Config] = {}
        self._empty: dict[str, int] = {}
        self._retiring: set[asyncio.Task] = set()
        self.on_crash = None  # told when a batcher dies

    def _model_names(self) -> list[str]:
        current = self.sources.current()
        self._sources.update(current)
        for name, source in current.items():
            if self.registry.labels.get(name, {}) != source.labels:
                self.registry.labels[name] = dict(source.labels)
                labels = ", ".join(f"{k} -> {v}" for k, v in sorted(source.labels.items()))
                log.info("%s: version labels %s", name, labels or "none")
        if self.sources.declared:
            for name in sorted(set(self.registry.versions) - set(current)):
                log.info("%s: no longer listed in %s; unloading it", name, self.sources)
                self.registry.labels.pop(name, None)
                self._configs.pop(name, None)
                for model in list(self.registry.versions[name].values()):
                    self._retire(model)
        return sorted(set(current) | set(self.registry.versions))

    async def sync(self):
        """One pass over every model's folder."""
        for name in self._model_names():
            await self._sync_model(self._sources[name])

    async def _sync_model(self, source: ModelSource):
        name = source.name
        present = repository.versions_in(source.base_path)
        if not present:
            self._empty[name] = self._empty.get(name, 0) + 1
            if self._empty[name] == 1:
                log.info("%s: no versions under %s", name, source.base_path)
            if self._empty[name] == EMPTY_PASSES and name in self.registry.versions:
                log.warning("%s: no versions on disk for %d passes; unloading the model", name, EMPTY_PASSES)
                for model in list(self.registry.versions[name].values()):
                    self._retire(model)
            return
        self._empty.pop(name, None)
        config = self._config(source, present)
        if config is None:
            return
        candidates = [v for v in present if self._may_try(source, v, config)]
        wanted = config.policy.choose(candidates)
        current = {v for v, m in self.registry.versions.get(name, {}).items() if _current(m, source, config)}
        for version in sorted(wanted - current, reverse=True):
            if await self._load(source, version, config) or config.policy.kind != "latest":
                continue
            for older in sorted((v for v in candidates if v < version and v not in wanted), reverse=True):
                if older in current or await self._load(source, older, config):
                    break
        self._retire_unwanted(name, present, wanted, config)

    def _retire_unwanted(self, name: str, present: list[int], wanted: set[int], config: ModelConfig):
        loaded = self.registry.versions.get(name, {})
        if config.policy.kind == "latest":
            keep = set(sorted(v for v in loaded if v in present)[-config.policy.count :])
        else:
            keep = set(loaded) & wanted
        if not keep:  # nothing wanted could load: serving something beats serving nothing
            if loaded:
                log.warning("%s: no wanted version could be loaded; still serving %s", name, sorted(loaded))
            return
        for version in set(loaded) - keep:
            self._retire(loaded[version])

    def _config(self, source: ModelSource, present: list[int]) -> ModelConfig | None:
        name = source.name
        file = source.base_path / model_config.FILE
        stamp = model_config.stamp(file), source.policy  # a models.config read again may change the policy
        cached = self._configs.get(name)
        if cached and cached.stamp == stamp:
            return cached.config
        previous = cached.config if cached else None
        # A models.config's version policy is the model's default; its config.json may not contradict it.
        defaults = replace(self.defaults, policy=source.policy) if source.policy else self.defaults
        try:
            config = model_config.load(file, defaults)
            if source.policy and config.policy != source.policy:
                raise ConfigError(f"{file}: its version_policy contradicts the model_version_policy of the --model-config-file")
        except ConfigError as err:
            log.error("%s: %s; %s", name, err, "keeping the previous configuration" if previous else "not loading it")
            if previous is None:
                for version in present:
                    self._set_state(name, version, UNAVAILABLE, f"bad configuration: {err}")
            self._configs[name] = _Config(stamp, previous)
            return previous
        if previous is not None and not _loads_alike(previous, config):
            log.info("%s: %s changed; reloading its versions with the new configuration", name, model_config.FILE)
        self._configs[name] = _Config(stamp, config if config != previous else previous)  # refusals compare identity
        return self._configs[name].config

    def _may_try(self, source: ModelSource, version: int, config: ModelConfig) -> bool:
        name = source.name
        refusal = self.refused.get((name, version))
        if refusal is None:
            return True
        path = source.base_path / str(version)
        changed = refusal.config is not config or contents(path) != refusal.contents
        if time.monotonic() < refusal.retry_at or not changed:
            return False
        log.info("%s version %d or its configuration changed since it was refused; trying again", name, version)
        return True

    async def _load(self, source: ModelSource, version: int, config: ModelConfig) -> bool:
        name, path = source.name, source.base_path / str(version)
        loop = asyncio.get_running_loop()
        self._set_state(name, version, LOADING)
        before = contents(path)
        try:
            log.info("loading %s version %d from %s", name, version, path)
            # Loading and XLA compiles block for seconds: off the event loop, so calls go on meanwhile.
            model = await loop.run_in_executor(None, partial(ServedModel, path, self.device, config, self.observer, name=name))
            await loop.run_in_executor(None, model.warm_up, log.info)
        except Exception as err:  # noqa: BLE001 - any broken artifact is refused, never served
            backoff = self.refused[(name, version)].backoff * 2 if (name, version) in self.refused else RETRY_BACKOFF
            backoff = min(backoff, MAX_BACKOFF)
            self.refused[(name, version)] = Refusal(before, config, time.monotonic() + backoff, backoff)
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            self._set_state(name, version, UNAVAILABLE, reason)
            log.error("refused %s version %d: %s (tried again when it changes)", name, version, reason)
            if self.registry.versions.get(name, {}).get(version):  # still serving the older load of it
                self._set_state(name, version, AVAILABLE)
            return False
        self.refused.pop((name, version), None)
        model.batcher.on_crash = self.on_crash
        model.batcher.start()
        replaced = self.registry.versions.get(name, {}).get(version)
        self.registry.add(model)
        if replaced is not None:
            self._retire(replaced)
        self._set_state(name, version, AVAILABLE)
        log.info("serving %s version %d on %s", name, version, self.device)
        heap.settle()
        return True

    def _retire(self, model: ServedModel):
        self.registry.remove(model)
        if self.registry.versions.get(model.name, {}).get(model.version) is None:
            self._set_state(model.name, model.version, END)
        log.info("retiring %s version %d after its accepted requests", model.name, model.version)
        task = asyncio.create_task(self._finish(model))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _finish(self, model: ServedModel):
        await asyncio.sleep(RETIRE_GRACE)
        await model.batcher.drained()
        await model.batcher.stop()
        await asyncio.get_running_loop().run_in_executor(None, model.close)
        heap.settle()
        log.info("retired %s version %d", model.name, model.version)

    def _set_state(self, name: str, version: int, state: str, reason: str = ""):
        new = VersionState(state, reason)
        if self.registry.states.get((name, version)) == new:
            return
        self.registry.states[(name, version)] = new
        log.info("%s version %d: %s%s", name, version, state, f" ({reason})" if reason else "")
        self.observer.version_state(name, version, state, STATES)

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
            await asyncio.to_thread(model.close)  # it waits for the model's threads: not on the loop
        await asyncio.gather(*self._retiring, return_exceptions=True)
