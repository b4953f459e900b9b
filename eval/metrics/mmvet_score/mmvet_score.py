"""MM-Vet's official aggregation as an ``evaluate`` metric: ``evaluate.load("<path>/mmvet_score")`` works offline.

The same function as ``vlfeedback_kit.eval.mmvet.score`` (official ``mm-vet_evaluator.py`` capability and
integration means, run totals, population std): the predictions are settled grades (0.0-1.0), one per item per run.
"""

import datasets
import evaluate

from vlfeedback_kit.eval.mmvet import capability_set, score

_DESCRIPTION = "MM-Vet (arXiv 2308.02490) capability scores from LLM grades by the official evaluator's rule."
_CITATION = (
    "@article{yu2023mmvet, title={MM-Vet: Evaluating Large Multimodal Models for Integrated Capabilities}, "
    "author={Yu, Weihao and others}, journal={arXiv preprint arXiv:2308.02490}, year={2023}}"
)
_INPUTS = """
Args:
    predictions: grades in [0, 1] (one per item and run).
    ids: the item of each grade ("v1_0", ...).
    capabilities: the item's capabilities, comma-joined ("ocr,math").
    runs: the grading run of each grade (0, 1, ...).
Returns:
    {"total", "std", "runs", "capabilities", "integrations", ...}
"""


class MMVetScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("float64"),
                    "ids": datasets.Value("string"),
                    "capabilities": datasets.Value("string"),
                    "runs": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://github.com/yuweihao/MM-Vet"],
        )

    def _compute(self, predictions, ids, capabilities, runs):
        caps = {item: capability_set(value) for item, value in zip(ids, capabilities)}
        graded = [{} for _ in range(max(runs) + 1)]
        for grade, item, run in zip(predictions, ids, runs):
            graded[run][item] = grade
        return score(caps, graded)
