"""Everything a sweep checks before anything starts, in one place: the command line
composed into every trial's config and validated (``validation``), the bounds, the user's
model and task probed (``targets``), the store (``rnnsweep.store``), the long-trial and
Optuna settings, and this machine's CPUs and GPUs (``local``); ``checks.check_command``
runs them in order. Above ``config``, ``trial`` and ``sweep``, which it imports; nothing
but the command line (``rnnsweep.cli``) imports it."""
