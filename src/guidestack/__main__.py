"""``python -m guidestack`` runs the CLI."""

from guidestack.engine.cli import main

raise SystemExit(main())
