"""MME's official score as an ``evaluate`` metric: ``evaluate.load("<path>/mme_score")`` works offline.

The same function as ``vlfeedback_kit.eval.mme.score`` (official ``calculation.py`` parse and score); inputs in the
official layout's order, the two questions of an image adjacent.
"""

import datasets
import evaluate

from vlfeedback_kit.eval.mme import Answered, score, subtask_scores

_DESCRIPTION = "MME (arXiv 2306.13394) yes/no scoring by the official eval_tool/calculation.py rule."
_CITATION = (
    "@article{fu2023mme, title={MME: A Comprehensive Evaluation Benchmark for Multimodal Large Language "
    "Models}, author={Fu, Chaoyou and others}, journal={arXiv preprint arXiv:2306.13394}, year={2023}}"
)
_INPUTS = """
Args:
    predictions: model responses (one line each).
    references: ground truths, "Yes" or "No".
    image_ids: the image of each question (an image's two questions adjacent).
    subtasks (optional): the MME subtask of each question; with it, perception / cognition totals are returned.
Returns:
    without subtasks: {"acc", "acc_plus", "score", "questions", "other"} of one subtask;
    with subtasks: the scores.json of `vlfeedback eval` (perception, cognition, subtasks, other, ...).
"""

_STRING = datasets.Value("string")


class MMEScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=[
                datasets.Features({"predictions": _STRING, "references": _STRING, "image_ids": _STRING}),
                datasets.Features(
                    {"predictions": _STRING, "references": _STRING, "image_ids": _STRING, "subtasks": _STRING}
                ),
            ],
            reference_urls=["https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation"],
        )

    def _compute(self, predictions, references, image_ids, subtasks=None):
        if subtasks is None:
            return subtask_scores(
                [Answered("subtask", i, "", r, p) for p, r, i in zip(predictions, references, image_ids)]
            )
        return score([Answered(s, i, "", r, p) for p, r, i, s in zip(predictions, references, image_ids, subtasks)])
