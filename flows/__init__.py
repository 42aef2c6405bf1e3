"""Prefect flows over the humo stages: thin orchestration, no business logic.

- :mod:`flows.pipeline`: the DVC pipeline stage by stage (curate -> ... -> register);
- :mod:`flows.batch_inference`: requests file or inbox -> videos + sidecars, fanned out over Dask workers;
- :mod:`flows.curation`: curation fanned out over Dask workers for large raw datasets;
- :mod:`flows.deployments`: the scheduled deployments (``python -m flows.deployments serve``).

Run from the project root (the folder holding params.yaml and dvc.yaml).
"""

from __future__ import annotations

import os

# Library logs (logger "humo.*") appear in the Prefect run logs; no telemetry leaves the machine.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "humo")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
