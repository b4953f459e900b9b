"""Deprecated: moved to :mod:`vlfeedback_kit.eval.arena.commands` (the arena is one package); this alias goes in
the next release — import from ``vlfeedback_kit.eval.arena.commands`` instead.

The old name is the new module itself (the same object), so ``register`` is registered once whichever name the
CLI lists.
"""

import sys

from vlfeedback_kit.eval.arena import commands

sys.modules[__name__] = commands
