"""vlfeedback_kit.eval: benchmark scoring and base-vs-Silkie comparisons.

Modules: ``mme``, ``mmhal``, ``mmvet`` (official rules), ``redteam``, ``winrate`` (kit conventions), ``spec``
(benchmark YAMLs), ``judging`` (pinned, cached judge calls), ``generation`` (resumable responses), ``scoring``,
``runner``, ``report``, ``bench``; shared with the Space: ``serving`` (one base + adapter, both sides in one
generate) and ``pairwise`` (win rate, bootstrap CI, Bradley–Terry, order-swap rule).
"""
