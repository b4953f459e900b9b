"""vlfeedback_kit.eval: benchmark scoring and base-vs-Silkie comparisons.

Modules: ``mme``, ``mmhal``, ``mmvet`` (official rules), ``redteam``, ``winrate`` (kit conventions), ``spec``
(benchmark YAMLs), ``judging`` (pinned, cached judge calls), ``generation`` (resumable responses), ``scoring``,
``runner``, ``report``, ``bench``; ``pairwise`` (win rate, bootstrap CI, Bradley–Terry, order-swap rule), shared
with the Space; ``arena``, the Silkie-vs-base Space's package (one module per job). Models are loaded and run by
:mod:`vlfeedback_kit.serving` (``serving`` here is its deprecated alias, for one release).
"""
