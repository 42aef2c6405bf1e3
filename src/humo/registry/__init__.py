"""humo.registry: the MLflow model registry and serving.

- :mod:`~humo.registry.pyfunc`: the registered model (an MLflow pyfunc around ``HumoPipeline``) and its folder;
- :mod:`~humo.registry.request`: validation of serving requests (errors name the field);
- :mod:`~humo.registry.manifest`: weights registered by reference, with sha256 verified at load;
- :mod:`~humo.registry.mlflow_registry`: versions, tags and aliases (``candidate``, ``champion``);
- :mod:`~humo.registry.register`: the ``register`` stage; :mod:`~humo.registry.serve`: ``humo serve``;
- :mod:`~humo.registry.resolver`: ``models:/name@alias`` for batch generation.

Importing this package registers the ``models`` scheme with :func:`humo.inference.batch.register_model_resolver`,
so ``humo.inference.batch.load_model("models:/humo@champion")`` works once ``humo.registry`` is imported.
"""

from __future__ import annotations

from humo.inference.batch import register_model_resolver
from humo.registry.resolver import resolve_registered_model

register_model_resolver("models", resolve_registered_model)

__all__ = ["resolve_registered_model"]
