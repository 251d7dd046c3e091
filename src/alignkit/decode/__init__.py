"""Generation and decoding-time alignment.

Every method has the signature `method(model, tokenizer, prompts, **parameters) -> list[Completion]`
and is also reachable by name through `run_method(name, ...)` and `alignkit generate --method NAME`.
Prompts are strings or message lists; both go through the tokenizer's chat template (a string as one user
message) unless `chat_template=False` (raw text, for base models); a tokenizer without a template takes
`chat_template="chatml"`, `"zephyr"` or a Jinja file (`alignkit.data.prompts.render_prompt`). URIAL and
nudging's base model read their own plain-text frames instead.
"""

from alignkit.decode.core import Completion, ForwardCounter
from alignkit.decode.guidance import GuidedLogits, combine_logprobs, genarm
from alignkit.decode.methods import METHODS, get_method, run_method
from alignkit.decode.nudging import nudging
from alignkit.decode.rerank import best_of_n, sample_and_rerank, sample_candidates, win_rate, worst_of_n
from alignkit.decode.sampling import draw_samples
from alignkit.decode.search import SearchSettings, deal, search
from alignkit.decode.steering import load_directions, save_directions, steered, steering, steering_directions
from alignkit.decode.transfer_q import transfer_q
from alignkit.decode.urial import urial, urial_prompt

__all__ = [
    "Completion", "ForwardCounter", "GuidedLogits", "METHODS", "SearchSettings", "best_of_n", "combine_logprobs",
    "deal", "draw_samples", "genarm", "get_method", "load_directions", "nudging", "run_method", "sample_and_rerank",
    "sample_candidates", "save_directions", "search", "steered", "steering", "steering_directions", "transfer_q",
    "urial", "urial_prompt", "win_rate", "worst_of_n",
]
