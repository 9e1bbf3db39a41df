"""metaimprove's tests.

``tests/<subpackage>/test_<module>.py`` tests ``metaimprove/<subpackage>/<module>.py`` and ``tests/test_<module>.py``
a top-level module (``test_imports.py`` the import structure, ``test_shipped.py`` the operators under
``results/operators/``, the only tests that read ``results/``). ``tests/e2e/`` holds checks across stages: bad input
through the CLI, users' envs and MJCF files, Ray, kill and resume. ``tests/slow/`` holds the long checks, left out
unless ``-m slow``. Shared values and functions are in ``tests/helpers.py``, shared fixtures in the ``conftest.py``
files.
"""
