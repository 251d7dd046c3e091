"""Activation steering with representation-engineering directions (Wolf et al., "Tradeoffs Between Alignment
and Helpfulness in Language Models with Steering Methods", arXiv 2401.16332; official code
dorin133/REPE_alignment_helpfulness_tradeoff@1803d78 utils/generate_reading_vectors.py, utils/WrapModel.py,
built on RepE `rep-reading`).

Reading: for contrastive prompt pairs (x⁺_i, x⁻_i), h_l(x) is the output of decoder block l at token `token`
(last token, RepE `rep_token=-1`) and d_i = h_l(x⁺_i) − h_l(x⁻_i) (RepE `n_difference=1`). The direction is
  * "pca" (the paper's `direction_method='pca'`, `n_components=1`): the first principal component of the
    differences. RepE shuffles each pair so the differences carry random signs ±d_i and then centres them;
    the deterministic equivalent used here is PCA of the symmetric set {d_i, −d_i}, i.e. the top right
    singular vector of D = [d_i] (uncentred);
  * "mean_difference": mean_i d_i.
The sign makes positives score higher: v is flipped when fewer pairs have d_i·v > 0 than d_i·v < 0 (ties by the
sign of Σ d_i·v); RepE's `get_signs` with labels. Then v ← v/‖v‖ (the paper normalises before injection).

Steering: decoder block l's output becomes h_l + c·v_l at every position (padding included; padded positions
are masked out of attention), no renormalisation (`normalize=False`). Cost: no extra forwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.data.prompts import ChatTemplate, Prompt, render_prompt, render_prompts, text_of
from alignkit.data.records import Record
from alignkit.data.rows import RowProblem, collect
from alignkit.decode.core import Completion, ForwardCounter, decode_new, encode_left_padded, seeded
from alignkit.decode.methods import Method, register_method
from alignkit.lazy import lazy
from alignkit.models.modes import evaluating

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")

Directions = Mapping[int, "torch.Tensor"]
# Paper layers for 32-layer models (Llama-2-7b, Llama-3.1-8B): blocks 14..10 = range(-18, -23, -1), i.e. the
# depth fractions [10/32, 14/32]; 13B (40 layers) used blocks 15..8, i.e. [8/40, 15/40].
DEFAULT_LAYER_FRACTIONS = (10 / 32, 14 / 32)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's decoder blocks (`model.model.layers` for Llama-style models, `transformer.h` for GPT-2)."""
    decoder = model.get_decoder()
    for name in ("layers", "h"):
        if isinstance(getattr(decoder, name, None), torch.nn.ModuleList):
            return getattr(decoder, name)
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}")


def default_layers(num_layers: int, fractions: tuple[float, float] = DEFAULT_LAYER_FRACTIONS) -> list[int]:
    """Blocks floor(a·L) .. floor(b·L): the paper's 7B/8B choice (10..14 of 32) scaled to depth L
    (e.g. 9..13 of 30 for SmolLM2-135M; at least one block)."""
    first, last = int(fractions[0] * num_layers), int(fractions[1] * num_layers)
    return list(range(first, max(last, first) + 1))


@contextmanager
def recorded_outputs(model: PreTrainedModel, layers: Sequence[int]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Collect the output hidden states [B, T, H] of the given decoder blocks for every forward inside."""
    blocks = decoder_layers(model)
    outputs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def recorder(layer: int):
        def hook(module, args, output):
            outputs[layer].append((output[0] if isinstance(output, tuple) else output).detach())
        return hook

    handles = [blocks[layer].register_forward_hook(recorder(layer)) for layer in layers]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def read_hidden_states(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
                       layers: Sequence[int], token: int, batch_size: int) -> dict[int, torch.Tensor]:
    """Per layer, the block output at position `token` (negative: counted from the end) of every prompt [N, H],
    float32. Batched and left-padded, so negative positions are the prompt's own tokens. A string is read as the
    text it is (a contrast text, e.g. from `contrast_texts`); a message list through the chat template."""
    if token >= 0:
        raise ValueError("token must be a negative position (counted from the end; -1 = last token)")
    texts = [prompt if isinstance(prompt, str) else render_prompt(tokenizer, prompt) for prompt in prompts]
    with evaluating(model), recorded_outputs(model, layers) as outputs:
        for start in range(0, len(texts), batch_size):
            model(**encode_left_padded(tokenizer, texts[start:start + batch_size], model.device))
    return {layer: torch.cat([h[:, token].float() for h in outputs[layer]]) for layer in layers}


def unit_direction(differences: torch.Tensor, method: str) -> torch.Tensor:
    """Unit direction from pairwise differences D [N, H]: first principal component of {±d_i} or mean of d_i,
    oriented so that most pairs have d_i·v > 0 (module docstring)."""
    if method == "pca":
        direction = torch.linalg.svd(differences, full_matrices=False).Vh[0]
    elif method == "mean_difference":
        direction = differences.mean(0)
    else:
        raise ValueError(f"unknown method {method!r}; use 'pca' or 'mean_difference'")
    scores = differences @ direction
    votes = int((scores > 0).sum()) - int((scores < 0).sum())
    if votes < 0 or (votes == 0 and scores.sum() < 0):
        direction = -direction
    return direction / direction.norm()


def steering_directions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, positive: Sequence[Prompt],
                        negative: Sequence[Prompt], *, layers: Sequence[int] | None = None,
                        method: str = "pca", token: int = -1, batch_size: int = 8) -> dict[int, torch.Tensor]:
    """A unit direction per decoder block from contrastive pairs (positive[i], negative[i]).

    Defaults follow the paper: PCA of pairwise differences at the last token; `layers=None` takes
    `default_layers(num_layers)`. Hidden states are read with forward hooks on the blocks, i.e. exactly where
    `steered` adds (transformers' `output_hidden_states` gives the last block after the final norm).
    Directions are float32 on the CPU.
    """
    if len(positive) != len(negative) or not positive:
        raise ValueError("positive and negative must be non-empty and of the same length (pairs)")
    chosen = list(layers) if layers is not None else default_layers(len(decoder_layers(model)))
    plus = read_hidden_states(model, tokenizer, positive, chosen, token, batch_size)
    minus = read_hidden_states(model, tokenizer, negative, chosen, token, batch_size)
    return {layer: unit_direction(plus[layer] - minus[layer], method).cpu() for layer in chosen}


def contrast_texts(records: Sequence[Record], tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], list[str]]:
    """Positive and negative texts for `steering_directions`: rows {positive, negative}, or preference rows whose
    prompt is rendered with the chat template (a string prompt stays raw text, as training tokenizes it) and
    followed by the chosen (positive) or rejected (negative) answer's text. A row with neither is a DataError
    naming it."""
    def read(record: Record) -> tuple[str, str]:
        row = record.data
        if "positive" in row and "negative" in row:
            return str(row["positive"]), str(row["negative"])
        if all(key in row for key in ("prompt", "chosen", "rejected")):
            prompt = row["prompt"]
            prefix = prompt if isinstance(prompt, str) else render_prompt(tokenizer, prompt)
            return prefix + text_of(row["chosen"]), prefix + text_of(row["rejected"])
        raise RowProblem(None, "needs fields positive and negative, or prompt, chosen and rejected")
    contrasts = collect(records, read)
    return [positive for positive, _ in contrasts], [negative for _, negative in contrasts]


@contextmanager
def steered(model: PreTrainedModel, directions: Directions, coefficient: float) -> Iterator[None]:
    """Inside the block, decoder block l outputs h_l + coefficient·v_l at every position (forward hooks,
    removed on exit, also on error)."""
    blocks = decoder_layers(model)

    def adder(vector: torch.Tensor):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + coefficient * vector.to(output[0]),) + tuple(output[1:])
            return output + coefficient * vector.to(output)
        return hook

    handles = [blocks[int(layer)].register_forward_hook(adder(vector)) for layer, vector in directions.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def save_directions(directions: Directions, path: str | Path) -> None:
    """Write directions to safetensors, one tensor `layer.{l}` per block."""
    from safetensors.torch import save_file

    save_file({f"layer.{int(layer)}": vector.detach().cpu().contiguous() for layer, vector in directions.items()},
              str(path))


def load_directions(path: str | Path) -> dict[int, torch.Tensor]:
    """Read directions written by `save_directions`, ordered by layer."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return {int(name.split(".", 1)[1]): tensors[name]
            for name in sorted(tensors, key=lambda n: int(n.split(".", 1)[1]))}


def steering(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
             directions: Directions | str | Path, coefficient: float = 1.0, max_new_tokens: int = 128,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 8,
             seed: int | None = 0, chat_template: ChatTemplate = True) -> list[Completion]:
    """Generate with `coefficient`·v_l added to the chosen blocks' outputs (directions, or a safetensors path).

    The paper sweeps the coefficient over [−10, 10] (step 0.25) and reports alignment gains linear and
    helpfulness losses quadratic in it; 1.0 is a default scale only (hidden-state norms differ per model).
    Generation is `model.generate` with the KV cache (the cached keys/values are the steered ones), greedy by
    default; the paper's refusal evaluation samples at temperature 1. Diagnostics: `forward_passes`
    (rows per prompt), `coefficient`, `steered_layers`.
    """
    vectors = load_directions(directions) if isinstance(directions, (str, Path)) else directions
    texts = render_prompts(tokenizer, prompts, chat_template)
    settings: dict = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if do_sample:
        settings.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        settings.update(temperature=None, top_p=None, top_k=None)
    results: list[Completion | None] = [None] * len(texts)
    with evaluating(model), seeded(seed, model), steered(model, vectors, coefficient):
        for start in range(0, len(texts), batch_size):
            batch = list(range(start, min(start + batch_size, len(texts))))
            encoded = encode_left_padded(tokenizer, [texts[i] for i in batch], model.device)
            with ForwardCounter(model) as counter:
                output = model.generate(**encoded, **settings)
            new_texts, lengths = decode_new(tokenizer, output[:, encoded["input_ids"].shape[1]:])
            for k, index in enumerate(batch):
                results[index] = Completion(new_texts[k], lengths[k], {
                    "forward_passes": counter.rows / len(batch), "coefficient": float(coefficient),
                    "steered_layers": float(len(vectors))})
    return results


register_method(Method(
    name="steering", function=steering, mechanism="activation hooks", needs=("directions",),
    source="representation engineering; Wolf et al. arXiv 2401.16332 (REPE_alignment_helpfulness_tradeoff)",
    description="add coefficient * a unit direction to chosen layers' hidden states"))
