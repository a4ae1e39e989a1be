"""Built-in architectures. Importing this package registers them (``@register_architecture``).

Each module is one family: its blocks, its model class, then its registration. Outsiders add
their own through exactly the same public API (see the README, "Add an architecture").
"""
from . import cnn, lstm, transformer  # noqa: F401  (registration side effects)
# written through the public plugin API only (``from mnemoscope import Architecture, register_architecture``)
from . import gru, linear_attention, memory_lstm, moe_transformer, ssm, window_transformer  # noqa: F401
# the hf: prefix (Hugging Face families); transformers is imported only when one is used
from . import hf  # noqa: F401
