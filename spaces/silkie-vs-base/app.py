"""Silkie vs its base: blind battles, a named side-by-side and a leaderboard; votes go to a Hub dataset.

Runs unchanged on a CPU (``vlfeedback space`` or ``python app.py``), on a GPU and on ZeroGPU. Configuration is by
environment variables (Space variables / secrets): ARENA_MODEL, ARENA_MODEL_REVISION, ARENA_ADAPTER,
ARENA_ADAPTER_REVISION, ARENA_VOTES_REPO, ARENA_PUBLIC_VOTES, ARENA_VOTER_SECRET, ARENA_MAX_NEW_TOKENS, ... (all
fields of vlfeedback_kit.eval.arena.config.ArenaConfig); HF_TOKEN (a write token for the votes repo, as a Space
secret) is read by huggingface_hub only: without it the votes stay on the Space's disk and are lost at restart.
"""

try:
    import spaces  # first, before anything touches CUDA (ZeroGPU); its GPU decorator is a no-op elsewhere
except ImportError:  # a local run without Hugging Face's `spaces` package
    spaces = None

from vlfeedback_kit.eval.arena.config import ArenaConfig
from vlfeedback_kit.eval.arena.ui import create_app, launch_options, no_gpu

config = ArenaConfig.from_env()
demo, store = create_app(config, gpu=spaces.GPU if spaces is not None else no_gpu)  # the model loads here, once

if __name__ == "__main__":
    demo.launch(**launch_options(config))
