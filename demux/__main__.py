"""``python -m demux`` runs the command line."""

from demux.cli import main

raise SystemExit(main())
