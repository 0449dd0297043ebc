"""The one door to Hydra's and Ray's private APIs: every underscored module, function,
attribute or argument of theirs that rnnsweep uses goes through ``hydra_private`` or
``ray_private``, and nowhere else (``tests/test_layout.py`` checks it). Each access has a
test in ``tests/test_adapters.py`` that names the installed version and what changed, so
an upgrade that moves one fails there, at once, rather than somewhere in a sweep."""
