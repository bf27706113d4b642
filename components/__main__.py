"""``python -m components`` is the ``sovereign`` command."""

from components.cli import main

raise SystemExit(main())
