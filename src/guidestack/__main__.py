"""``python -m guidestack`` runs the CLI."""

from guidestack.cli.main import main

raise SystemExit(main())
