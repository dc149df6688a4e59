"""Datasets, one module each, every one imported here so the registry always sees all of them.

``base`` holds the contract and the registry (see zoo/data/base.py); ``cache`` the disk cache for derived sets;
``graphs`` the batch layout the graph datasets share.
"""
from .base import (Batch, DataModule, build_data, create_data, data_class, data_names, data_parameters,  # noqa: F401
                   num_items, register_data)
from . import arabizi  # noqa: F401
from . import gaussian  # noqa: F401
from . import graph_disturbance  # noqa: F401
from . import homework  # noqa: F401
from . import mnist  # noqa: F401
from . import mnist_superpixels  # noqa: F401
from . import mnist_points  # noqa: F401
from . import regression  # noqa: F401
from . import spectrum  # noqa: F401
from . import triangle  # noqa: F401
from .mnist import MNIST, MNIST_FILES, default_root, ensure_mnist  # noqa: F401
