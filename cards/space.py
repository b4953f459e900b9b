"""Deprecated: ``vlfeedback publish space`` moved to :mod:`vlfeedback_kit.eval.arena.publish` (the arena is one
package); this alias goes in the next release — import from ``vlfeedback_kit.eval.arena.publish`` instead.

Kept so ``from vlfeedback_kit.cards.space import SpaceRelease, publish_space`` keeps working for one release: the
old name is the new module itself (the same object), so setting an attribute on either changes both.
"""

import sys

from vlfeedback_kit.eval.arena import publish

sys.modules[__name__] = publish
