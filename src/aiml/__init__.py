"""aiml: a model-serving gateway that resolves MLflow registry names to engine models once."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ai-model-lifecycle")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
