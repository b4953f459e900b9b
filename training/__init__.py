"""training: Silkie DPO — recipes, accelerate configs, the DPO script and the tiny-model factory."""
