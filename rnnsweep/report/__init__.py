"""A sweep's report, rebuilt from its MLflow records alone (``python -m rnnsweep.report``).

A face with no imports: ``rnnsweep.report.build`` builds and logs the report; ``model``
holds its data, which the sweep and ``rnnsweep.compare`` read without MLflow's or
matplotlib's import."""
