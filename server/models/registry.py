"""Which version a request runs on: every loaded version of every model, and the
state of those loading, refused or retired."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from ..ops import phase
from ..pipeline.errors import RequestError

if TYPE_CHECKING:  # the registry runs without TensorFlow
    from .served import ServedModel


LOADING, AVAILABLE, UNAVAILABLE, END = "LOADING", "AVAILABLE", "UNAVAILABLE", "END"
STATES = (LOADING, AVAILABLE, UNAVAILABLE, END)


@dataclass
class VersionState:
    """One of STATES, as in TF Serving; UNAVAILABLE carries the reason."""

    state: str
    reason: str = ""


class Registry:
    """Every loaded version of every model; requests get the newest version
    unless they name one, or a version label (TF Serving's version_labels) that
    names one. A version enters only once it is warmed up.
    `states` also knows the versions that are loading, refused or retired."""

    def __init__(self, process: phase.Phase | None = None):
        """`process`: the server's phase, which decides whether a lookup may succeed."""
        self.versions: dict[str, dict[int, ServedModel]] = {}
        self.states: dict[tuple[str, int], VersionState] = {}
        self.labels: dict[str, dict[str, int]] = {}  # model -> label -> version, from a models.config
        self.process = process or phase.Phase()

    def all(self) -> list[ServedModel]:
        return [m for name in sorted(self.versions) for _, m in sorted(self.versions[name].items())]

    def add(self, model: ServedModel):
        self.versions.setdefault(model.name, {})[model.version] = model

    def remove(self, model: ServedModel):
        """Takes `model` out, unless a newer load of the same version replaced it."""
        loaded = self.versions.get(model.name, {})
        if loaded.get(model.version) is model:
            del loaded[model.version]
            if not loaded:
                del self.versions[model.name]

    def find(self, name: str, version: int = 0) -> ServedModel | None:
        """The named version, or the newest loaded one; None when there is none."""
        loaded = self.versions.get(name) or {}
        if version:
            return loaded.get(version)
        return loaded[max(loaded)] if loaded else None

    def get(self, name: str, version: int = 0, serving: bool = True, label: str = "") -> ServedModel:
        """The model a request runs on, or the status that says why there is none, for
        every API. `serving` False: a question about the model (metadata, config,
        statistics), answered while the server starts or drains too. `label`: a
        version label instead of a version, as TF Serving's (server_core.cc): one the
        model does not have is INVALID_ARGUMENT "Unrecognized servable version
        label: L"; one whose version is not loaded, NOT_FOUND (TF Serving refuses to
        assign such a label at all, by default)."""
        if version and label:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"give a version ({version}) or a version label ({label!r}), not both")
        if serving and self.process.current == phase.STOPPING:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica")
        if not name and len(self.versions) == 1:
            name = next(iter(self.versions))
        if serving and name not in self.versions and self.process.current == phase.STARTING:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is still loading its models")
        known = ", ".join(sorted(self.versions)) or "none"
        if not name:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"name the model: this server serves {known}")
        labelled = ""
        if label:
            version = self._labelled(name, label)
            labelled = f" (label {label!r})"
        model = self.find(name, version)
        if model is not None:
            return model
        states = {v: s for (n, v), s in self.states.items() if n == name and (v == version or not version)}
        if serving and not label and any(s.state == LOADING for s in states.values()):
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {name!r} is loading; retry shortly")
        why = "".join(f"; version {v} is {s.state}{': ' + s.reason if s.reason else ''}" for v, s in sorted(states.items()))
        if name in self.versions:
            loaded = ", ".join(map(str, sorted(self.versions[name])))
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} version {version}{labelled} is not loaded (loaded: {loaded}){why}")
        if label:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} version {version}{labelled} is not loaded{why}")
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served here (models: {known}){why}")

    def _labelled(self, name: str, label: str) -> int:
        """The version `label` names; TF Serving's status and message when it names none."""
        labels = self.labels.get(name, {})
        if label not in labels:
            has = f"model {name!r} has labels {', '.join(sorted(labels))}" if labels else f"model {name!r} has no version labels"
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label} ({has})")
        return labels[label]


def version_number(text: str) -> int:
    """A version given as text (KServe's, an HTTP path's) as a version number; "" (and
    "0"): the latest. ASCII digits only (isdigit() alone takes "²", which int() refuses,
    and "１"), and within int64, as the native API's version: anything else is no
    version, refused on every API."""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) >= 2**63:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"model_version {text!r} is not a version number")
    return int(text)
