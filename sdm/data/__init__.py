"""Datasets: formats registry, synthetic scenes, validation, preparation to Parquet shards, the loader.

Import the submodules directly (``sdm.data.loader`` imports torch; the rest do not):
``sdm.data.manifest.read_manifest``, ``sdm.data.loader.PreparedDataset``,
``sdm.data.prepare.prepare``, ``sdm.data.synthetic.synthesize``,
``sdm.data.version.data_version``.
"""
