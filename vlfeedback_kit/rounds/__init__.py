"""On-policy rounds (``vlfeedback rounds``): the current policy answers each prompt n times, the judge rates the
answers, the round's pairs train the next adapter from the previous one, and each round is scored against the
previous round and the base on held-out prompts.

One module per job: :mod:`.config` (the YAML), :mod:`.inputs` (a built folder's prompts), :mod:`.generate` (n
seeded samples per prompt into the release layout), :mod:`.judge` (``annotate`` of the pipeline), :mod:`.data` (the
round's build and the versioned folder of all rounds), :mod:`.train` (``vlfeedback train`` from the previous
adapter), :mod:`.evaluate` (judged win rates), :mod:`.report` (``report.md`` and the plot), :mod:`.publish` (lineage
on the Hub), :mod:`.plan` (``--dry-run``), :mod:`.bench`, :mod:`.loop` (the resumable order of stages) and
:mod:`.commands` (the verb). Each stage works through the other folders' public functions and files, and marks
itself done atomically, so a re-run after a kill skips what is finished.
"""
