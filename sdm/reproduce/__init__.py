"""Re-creating a registered model version: what a training run records, the data checkout by content hash,
and ``sdm reproduce`` (retrain with the recorded config, compare the weights).

- :mod:`sdm.reproduce.record`: the ``reproduce/`` record every training run writes (run folder + MLflow);
- :mod:`sdm.reproduce.checkout`: ``sdm data checkout``: prepared data back from the DVC remote by its md5;
- :mod:`sdm.reproduce.version`: a ``models:/`` URI -> the version's tags and its training run's record;
- :mod:`sdm.reproduce.rerun`: ``sdm reproduce``: check the code, restore the data, retrain, compare.
"""
