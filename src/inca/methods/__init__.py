"""The methods, one package each (peft's ``tuners/<method>/``), and their registry.

Each package registers its method when imported: its name, config dataclass, input (frozen
tokens or pixels), default learning rates or plan and task kind (``inca.methods.registry``).
Methods on frozen tokens (``linear``, ``inca``) also register an adapter kind
(``inca.adapters.registry``); methods trained from pixels have a config subclassing
``inca.methods.pixel_config.FineTuneConfig`` (data) and register a
``inca.methods.pixel_method.PixelMethod`` (behaviour: builds the model, says how runs train).

    >>> [m.name for m in inca.list_methods()]
    ['linear', 'inca', 'open-inca', 'vqt', 'full', 'partial', 'lora', 'stochca']
"""

# each import registers its method; registration order is listing order
# isort: off
from inca.methods import linear as _linear  # noqa: F401
from inca.methods import inca as _inca  # noqa: F401
from inca.methods import vqt as _vqt  # noqa: F401
from inca.methods import full as _full  # noqa: F401
from inca.methods import partial as _partial  # noqa: F401
from inca.methods import lora as _lora  # noqa: F401
from inca.methods import stochca as _stochca  # noqa: F401
from inca.methods import open_inca as _open_inca  # noqa: F401
from inca.methods import analytic as _analytic  # noqa: F401
# isort: on

from inca.methods.registry import Method, get_method, list_methods, register_method

__all__ = ["Method", "get_method", "list_methods", "register_method"]
