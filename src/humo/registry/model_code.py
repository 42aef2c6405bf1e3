"""MLflow "model from code" entry: the file MLflow stores with the model and runs to build the pyfunc at load time.

Logging the model by this file (instead of pickling an object) keeps the registered model free of pickled code:
loading it imports :class:`humo.registry.pyfunc.HumoPyfuncModel` from the installed humo package.
"""

from __future__ import annotations

from mlflow.models import set_model

from humo.registry.pyfunc import HumoPyfuncModel

set_model(HumoPyfuncModel())
