"""`python -m unirl_kit.cli ...` (what `torchrun -m unirl_kit.cli ...` runs): the `unirl` command."""

from unirl_kit.cli import main

main()
