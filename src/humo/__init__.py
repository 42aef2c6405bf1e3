"""humo: HuMo (arXiv 2509.08519) re-implemented as MLOps software.

Importing this package is cheap on purpose: heavy libraries (torch, mlflow, ...) are imported by the
sub-modules that need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("humo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
