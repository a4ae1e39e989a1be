"""Built-in tasks. Importing this package registers them (``@register_task``)."""
from . import code, text  # noqa: F401
from . import images, math, probes, video  # noqa: F401
