"""mnemoscope: the machinery of the harness (registry, contracts, training, evaluation, studies)."""
from .contract.model import Architecture
from .contract.task import Task, TokenSplit
from .errors import ContractError, RegistryError, UserError
from .registry import ARCHITECTURES, TASKS, register_architecture, register_task

__all__ = ["Architecture", "Task", "TokenSplit", "ARCHITECTURES", "TASKS", "register_architecture",
           "register_task", "UserError", "RegistryError", "ContractError", "load", "run"]

#: the Python interface (docs/python.md), imported when first used: a plugin that only subclasses
#: Architecture or Task does not load the training and report machinery (Lightning, Optuna, matplotlib)
_LAZY = {"load": "report.view", "run": "api"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
__version__ = "0.1.0"
