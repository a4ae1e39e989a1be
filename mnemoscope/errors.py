"""Errors a user can cause. The CLI turns these into one line and a non-zero exit."""


class UserError(Exception):
    """Bad input: a name, a size, a file, a plugin. Shown as one line, never a traceback."""


class RegistryError(UserError):
    """An unknown or duplicate architecture or task name, or a plugin that cannot be loaded."""


class ContractError(UserError):
    """A plugin that breaks the architecture contract (shape, causality, finiteness)."""
