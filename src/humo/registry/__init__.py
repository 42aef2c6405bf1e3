"""humo.registry: the MLflow model registry and serving.

- :mod:`~humo.registry.pyfunc`: the registered model (an MLflow pyfunc around ``HumoPipeline``) and its folder;
- :mod:`~humo.registry.request`: validation of serving requests (errors name the field);
- :mod:`~humo.registry.manifest`: weights registered by reference, with sha256 verified at load;
- :mod:`~humo.registry.mlflow_registry`: versions, tags and aliases (``candidate``, ``champion``);
- :mod:`~humo.registry.register`: the ``register`` stage; :mod:`~humo.registry.serve`: ``humo serve``;
- :mod:`~humo.registry.resolver`: ``models:/name@alias`` for batch generation.

Nothing is registered on import: callers pass :data:`MODEL_RESOLVERS` to
:func:`humo.inference.generate.load_model` (``humo generate`` and the batch-inference flow do), so
``models:/humo@champion`` resolves wherever it is passed and nowhere by accident.
"""

from __future__ import annotations

from humo.registry.resolver import MODEL_RESOLVERS, resolve_registered_model

__all__ = ["MODEL_RESOLVERS", "resolve_registered_model"]
