"""vlfeedback_kit: the VLFeedback dataset and the Silkie model it trains, released the Hugging Face way.

One import name for the whole kit; its subpackages are the repository's top-level folders, mapped in
``pyproject.toml``:

- ``vlfeedback_kit.builders`` (``builders/``): the dataset — schema, ingest, pairing, the feedback pipeline;
- ``vlfeedback_kit.training`` (``training/``): Silkie DPO with TRL (needs the ``[train]`` extra);
- ``vlfeedback_kit.eval`` (``eval/``): benchmark scoring, base vs Silkie;
- ``vlfeedback_kit.cards`` (``cards/``): dataset and model cards, Hub releases.

``spaces/`` holds deployable Space folders and is not part of the package (a ZeroGPU Space imports Hugging Face's
own ``spaces`` package).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vlfeedback-kit")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
