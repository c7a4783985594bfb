"""``python -m vramguard`` runs the CLI."""

from vramguard.commands.main import main

raise SystemExit(main())
