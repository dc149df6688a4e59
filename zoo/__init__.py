"""zoo: classic deep-learning models behind one trainer and one CLI."""
__version__ = "0.1.0"

from .registry import create_model, list_models, model_info, register_model  # noqa: E402,F401
