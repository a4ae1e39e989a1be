"""mnemoscope: the machinery of the harness (registry, contracts, training, evaluation, studies)."""
from .errors import ContractError, RegistryError, UserError
from .model import Architecture
from .registry import ARCHITECTURES, TASKS, register_architecture, register_task
from .task import Task, TokenSplit

__all__ = ["Architecture", "Task", "TokenSplit", "ARCHITECTURES", "TASKS", "register_architecture",
           "register_task", "UserError", "RegistryError", "ContractError"]
__version__ = "0.1.0"
