"""`python -m asuka`: the command line (see `asuka.cli`)."""

from asuka.cli import main


raise SystemExit(main())
