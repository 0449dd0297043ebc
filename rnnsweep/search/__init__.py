"""rnnsweep's own Optuna sweeper (``hydra/sweeper=rnnsweep_optuna``): the search space in
Hydra's Optuna syntax, samplers and pruners, persistent studies, duplicate proposals, and
the sweep loop that asks Optuna for trials and tells it what they measured.

The Hydra plugin in ``hydra_plugins/rnnsweep_optuna_sweeper`` is a shim over
``rnnsweep.search.sweeper``; Optuna is imported only when a sweep uses it.
"""
