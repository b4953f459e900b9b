"""Deprecated: moved to :mod:`vlfeedback_kit.serving` (the kit's one local VLM serving layer); this re-export goes
in the next release — import from ``vlfeedback_kit.serving`` instead.

Kept so ``from vlfeedback_kit.eval.serving import load, generate, generate_both`` keeps working for one release.
"""

from vlfeedback_kit.serving import (  # noqa: F401 - re-exported
    BASE,
    SILKIE,
    GenerationSettings,
    ServedModel,
    adapter_base,
    base_of_run,
    chat_inputs,
    generate,
    generate_both,
    generate_from_inputs,
    load,
    refuse_mixed_rows,
    sample,
    shares_image_features,
)
