"""The MLflow model registry: register evaluated checkpoints, tag their lineage, promote, resolve model URIs.

- ``register.register_checkpoint``: a checkpoint + its metrics.json -> a registered pyfunc version;
- ``lineage``: the ``lineage.*`` tags (git commit, data version, params hash, training run);
- ``metrics`` / ``promotion``: the primary metric and the champion decision;
- ``signature`` / ``pyfunc_io`` / ``packaging``: the served model's interface and contents;
- ``model_uri``: ``models:/NAME@ALIAS`` -> a local checkpoint (``sdm sample --model``).
- ``fingerprint`` / ``retrain_plan``: what a model depends on (data, params, code) and what a scheduled
  ``retrain`` run does about it: up to date, resume, continue from the champion, or scratch.

The store is ``sdm.tracking``'s: sqlite under mlflow/ unless MLFLOW_TRACKING_URI says otherwise.
"""
