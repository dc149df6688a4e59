"""``python -m zoo`` is the ``zoo`` command; torchrun starts it as ``torchrun --nproc_per_node=N -m zoo train ...``."""
import sys

from .cli import main

sys.exit(main())
