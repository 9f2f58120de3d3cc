"""``python -m hive_bridge`` is the ``hive-bridge`` CLI."""

from .cli import main

raise SystemExit(main())
