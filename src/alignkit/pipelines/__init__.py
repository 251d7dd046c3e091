"""Dataset pipelines: read rows, run models, decoding or rewards over them, return new rows.

Each function here is what one dataset verb of `alignkit` runs (`sample`, `score`, `data udm`); each checks
its rows before it loads a model, and returns the input rows with new fields, for
`alignkit.data.writing.write_jsonl`. They compose the layers below (`data`, `models`, `decode`,
`objectives`) and are imported by the CLI, evaluation and training loops.
"""

from alignkit.pipelines.sample import sample_rows
from alignkit.pipelines.score import likelihood_rows, read_reference_samples, reward_rows, scoring_examples
from alignkit.pipelines.udm import UDMSummary, udm_rows

__all__ = ["UDMSummary", "likelihood_rows", "read_reference_samples", "reward_rows", "sample_rows", "scoring_examples",
           "udm_rows"]
