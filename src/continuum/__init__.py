"""trio-continuum: a high-performance LLM API router on trio.

Embed it in a trio program::

    async with trio.open_nursery() as nursery:
        router = await nursery.start(continuum.serve, continuum.load_config("configs/demo.yaml"))
        ...
        router.shutdown()
"""

from .actors.supervisor import RouterHandle as RouterHandle
from .actors.supervisor import serve as serve
from .config import BackendConfig as BackendConfig
from .config import Config as Config
from .config import ConfigError as ConfigError
from .config import config_from_dict as config_from_dict
from .config import dump_effective_config as dump_effective_config
from .config import generate_config as generate_config
from .config import load_config as load_config
from .config import parse_config as parse_config
from .core.errors import RouterError as RouterError

__version__ = "0.1.0"

__all__ = [
    "BackendConfig",
    "Config",
    "ConfigError",
    "RouterError",
    "RouterHandle",
    "__version__",
    "config_from_dict",
    "dump_effective_config",
    "generate_config",
    "load_config",
    "parse_config",
    "serve",
]
