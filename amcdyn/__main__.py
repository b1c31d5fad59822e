"""`python -m amcdyn`: the same as the `amcdyn` command."""

from ._cli import main


raise SystemExit(main())
