"""vlfeedback_kit.training: Silkie DPO — recipes, accelerate configs, the DPO script and the tiny-model factory.

Importing it refuses a TRL, transformers or PEFT outside the versions this release is tested with: the trainer
extensions use their private APIs (``_compute_loss``, ``mm_encoder_outputs``, ``_gradient_checkpointing_func``, …).
"""

from vlfeedback_kit.extras import check_versions

check_versions()
