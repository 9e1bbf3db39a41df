"""``python -m metaimprove <stage> ...``: the same as the ``metaimprove`` command."""

from metaimprove.cli import main

raise SystemExit(main())
