"""``python -m embwalk JOB ...``: the same as the ``embwalk`` command."""

from embwalk.cli import main

main()
