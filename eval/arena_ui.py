"""Deprecated: moved to :mod:`vlfeedback_kit.eval.arena.ui` (the arena is one package); this alias goes in the next
release — import from ``vlfeedback_kit.eval.arena.ui`` instead.

Kept so ``from vlfeedback_kit.eval.arena_ui import create_app, launch_options, no_gpu`` keeps working for one
release: the old name is the new module itself (the same object), so setting an attribute on either changes both.
"""

import sys

from vlfeedback_kit.eval.arena import ui

sys.modules[__name__] = ui
