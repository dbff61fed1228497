"""rLLM's own agent and environment files, unchanged, whether or not rLLM is installed.

rLLM is not on the package index, and its agents are usually taken as files: rLLM's
FrozenLake agent imports `rllm.agents.agent`, `rllm.agents.system_prompts`,
`rllm.types` and `rllm.environments.frozenlake.frozenlake`. `install_rllm_shim()` makes
such files import in every setup:

  * rLLM installed (its `rllm.agents.agent` and `rllm.environments.base.base_env` import):
    nothing is installed; rLLM's own classes are used.
  * Otherwise an import hook serves the `rllm` package: the modules that hold rLLM's base
    classes (COMPAT_MODULES: BaseAgent, BaseEnv, Action, Step, Trajectory, Episode) come
    from here, every other `rllm.*` module is loaded from its file in an `rllm` folder on
    `sys.path` (searched at import time, so a folder added later still counts), and a
    module found in neither place raises ModuleNotFoundError naming it and the file that
    was looked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from erl.core.interfaces import Action, BaseEnv

# ---------------------------------------------------------------- rLLM-compatible classes
# Field and method names as in rLLM (v0.2 to the `rllm.types` era), so code written against
# rLLM runs here. Plain dataclasses: rLLM's pydantic models are not needed to run an agent.


@dataclass
class RllmStep:
    prompt_ids: list = field(default_factory=list)
    response_ids: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    chat_completions: list = field(default_factory=list)
    observation: Any = None
    thought: str = ""
    action: Any = None
    model_response: str = ""
    model_output: Any = None
    info: dict = field(default_factory=dict)
    reward: float = 0.0
    done: bool = False
    mc_return: float = 0.0
    advantage: Any = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    input: Any = None
    output: Any = None

    @property
    def metadata(self) -> dict:  # rLLM's newer name for `info`
        return self.info

    @metadata.setter
    def metadata(self, value: dict) -> None:
        self.info = value


@dataclass
class RllmTrajectory:
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    name: str = "default_traj_name"
    task: Any = None
    steps: list = field(default_factory=list)
    reward: float | None = None
    info: dict = field(default_factory=dict)


@dataclass
class RllmEpisode:
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    task: Any = None
    termination_reason: Any = None
    is_correct: bool = False
    trajectories: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class RllmBaseAgent(ABC):
    @property
    def chat_completions(self) -> list[dict]:
        return []

    @property
    def trajectory(self) -> RllmTrajectory:
        return RllmTrajectory()

    def update_from_env(self, observation: Any, reward: float, done: bool, info: dict, **kwargs) -> None:
        raise NotImplementedError("an rLLM agent implements update_from_env")

    def update_from_model(self, response: str, **kwargs) -> Action:
        raise NotImplementedError("an rLLM agent implements update_from_model")

    @abstractmethod
    def reset(self) -> None: ...

    def get_current_state(self) -> RllmStep | None:
        steps = self.trajectory.steps
        return steps[-1] if steps else None


class RllmBaseEnv(BaseEnv):
    """rLLM's BaseEnv: ours plus a settable `idx` and a thread-safety flag."""

    @property
    def idx(self) -> Any:
        return getattr(self, "_idx", None)

    @idx.setter
    def idx(self, value: Any) -> None:
        self._idx = value

    @staticmethod
    def is_multithread_safe() -> bool:
        return True


_TYPES = {"Action": Action, "Step": RllmStep, "Trajectory": RllmTrajectory, "Episode": RllmEpisode}
COMPAT_MODULES: dict[str, dict[str, Any]] = {
    "rllm": {**_TYPES, "BaseAgent": RllmBaseAgent},
    "rllm.types": _TYPES,
    "rllm.agents": {**_TYPES, "BaseAgent": RllmBaseAgent},
    "rllm.agents.agent": {**_TYPES, "BaseAgent": RllmBaseAgent},
    "rllm.environments": {"BaseEnv": RllmBaseEnv},
    "rllm.environments.base": {"BaseEnv": RllmBaseEnv},
    "rllm.environments.base.base_env": {"BaseEnv": RllmBaseEnv},
}
_PACKAGES = {"rllm", "rllm.agents", "rllm.environments", "rllm.environments.base"}


def _in_rllm(name: str) -> bool:
    return name == "rllm" or name.startswith("rllm.")


def _folders(package: str) -> list[str]:
    """The folders of `package` (e.g. rllm.agents -> <entry>/rllm/agents) under sys.path now."""
    parts = package.split(".")
    found = (os.path.join(entry or os.getcwd(), *parts) for entry in sys.path if isinstance(entry, str))
    return list(dict.fromkeys(d for d in found if os.path.isdir(d)))


class _CompatLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        module.__dict__.update(COMPAT_MODULES[module.__name__], __erl_shim__=True)
        if module.__name__ in _PACKAGES:
            module.__path__ = _folders(module.__name__)


class RllmFinder(importlib.abc.MetaPathFinder):
    """Serves every `rllm.*` import while the compatibility layer is installed."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if not _in_rllm(fullname):
            return None
        if fullname in COMPAT_MODULES:
            return importlib.util.spec_from_loader(fullname, _CompatLoader(), is_package=fullname in _PACKAGES)
        parent = fullname.rpartition(".")[0]
        spec = importlib.machinery.PathFinder.find_spec(fullname, _folders(parent))
        if spec is None:
            file = fullname.replace(".", "/")
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: rLLM is not installed, no {file}.py (or {file}/) was found in the "
                f"folders on sys.path, and erl's rLLM compatibility layer only provides {', '.join(COMPAT_MODULES)}. "
                "Install rLLM, or put the folder that holds rLLM's source (the one containing rllm/) on sys.path.",
                name=fullname)
        return spec


def _shim() -> RllmFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, RllmFinder)), None)


def _forget_rllm(keep: set[str] = frozenset()) -> None:
    for name in [n for n in sys.modules if _in_rllm(n) and n not in keep]:
        del sys.modules[name]


def rllm_installed() -> bool:
    """Whether the real rLLM's base classes import (a folder named `rllm` is not enough).
    A failed try leaves no half-imported `rllm` modules behind."""
    if _shim() is not None:
        return False
    before = {n for n in sys.modules if _in_rllm(n)}
    try:
        agent = importlib.import_module("rllm.agents.agent")
        env = importlib.import_module("rllm.environments.base.base_env")
        return hasattr(agent, "BaseAgent") and hasattr(env, "BaseEnv")
    except ImportError:
        _forget_rllm(keep=before)
        return False


def install_rllm_shim() -> bool:
    """Let rLLM's agent and environment files import unchanged (see the module docstring).
    Returns False where the real rLLM is installed (nothing is done), True otherwise."""
    if _shim() is not None:
        return True
    if rllm_installed():
        return False
    _forget_rllm()  # an earlier half-import of an incomplete `rllm` folder
    sys.meta_path.insert(0, RllmFinder())
    importlib.invalidate_caches()
    return True


def remove_rllm_shim() -> None:
    """Undo install_rllm_shim: the hook and every `rllm` module imported through it."""
    finder = _shim()
    if finder is not None:
        sys.meta_path.remove(finder)
        _forget_rllm()
