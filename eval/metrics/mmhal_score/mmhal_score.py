"""MMHal-Bench's official score as an ``evaluate`` metric: ``evaluate.load("<path>/mmhal_score")`` works offline.

The same functions as ``vlfeedback_kit.eval.mmhal`` (official ``eval_gpt4.py`` rating parse and means): the
predictions are the judge's raw replies in template order (record i has type i % 8).
"""

import datasets
import evaluate

from vlfeedback_kit.eval.mmhal import parse_rating, score

_DESCRIPTION = "MMHal-Bench (arXiv 2309.14525) scoring of judge replies by the official eval_gpt4.py rule."
_CITATION = (
    "@article{sun2023aligning, title={Aligning Large Multimodal Models with Factually Augmented RLHF}, "
    "author={Sun, Zhiqing and others}, journal={arXiv preprint arXiv:2309.14525}, year={2023}}"
)
_INPUTS = """
Args:
    predictions: the judge's raw replies, in response_template.json order.
Returns:
    {"average_score", "hallucination_rate" (0-1), "per_type", "unparsed", ...}
"""


class MMHalScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://huggingface.co/datasets/Shengcao1006/MMHal-Bench"],
        )

    def _compute(self, predictions):
        return score([parse_rating(reply) for reply in predictions])
