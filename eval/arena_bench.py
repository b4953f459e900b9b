"""Deprecated: moved to :mod:`vlfeedback_kit.eval.arena.bench` (the arena is one package); this alias goes in the
next release — run ``python -m vlfeedback_kit.eval.arena.bench`` instead.

``python -m vlfeedback_kit.eval.arena_bench [FLAGS]`` still runs the benchmark for one release (it records the new
command and appends to ``eval.arena.bench.jsonl``), and importing the old name gives the new module itself.
"""

import sys

from vlfeedback_kit.eval.arena import bench

if __name__ == "__main__":
    bench.main()
else:
    sys.modules[__name__] = bench
