"""Built-in tasks. Importing this package registers them (``@register_task``)."""
from . import code, text  # noqa: F401
from . import books  # noqa: F401  (after text: it reads the same Shakespeare)
from . import images, math, probes, video  # noqa: F401
