"""``python -m gemma_worker`` runs the CLI."""

from gemma_worker.cli.main import main

raise SystemExit(main())
