"""``python -m influence_bench``: the ``influence-bench`` command."""

from influence_bench.cli import main

main()
