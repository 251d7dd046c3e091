"""Demonstration: OneEncoder-style progressive contrastive alignment of three frozen sentence spaces.

The spaces, embedded once and cached in memory (the encoders stay frozen):

* `minilm`: all-MiniLM-L6-v2 sentence embeddings (384-d, mean pooled, L2-normalised), `encoders.load_minilm`;
* `smollm2`: SmolLM2-135M-Instruct's last hidden state mean-pooled over the plain sentence (576-d, raw);
* `glove`: the mean of the GloVe 6B 50-d vectors of the sentence's lower-cased words and punctuation
  (Pennington et al. 2014), out-of-vocabulary tokens skipped (a zero vector when none is known).

Step 1 trains the Universal Projection with the minilm and smollm2 adapters (symmetric InfoNCE, CLIP arXiv
2103.00020); step 2 freezes it and trains only the glove adapter and token against the `anchors` (minilm by
default, so glove<->smollm2 is measured zero-shot, as OneEncoder arXiv 2409.11059 measures audio<->image
after aligning audio to text). "Before" is the projector at initialisation for step 1, and the frozen step-1
projector with the glove adapter at initialisation for step 2; chance is k / held-out count.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.represent.packages import WordVectors
from alignkit.represent.projection import (RECALL_KS, OneEncoderProjector, ProjectorConfig, TrainConfig,
                                           align_new_space, pair_retrieval, train_alignment)
from alignkit.represent.sentences import SOURCES, shipped_sentences, split_sentences

FIRST_PAIR = ("minilm", "smollm2")
THIRD = "glove"
WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class ProjectionDemo:
    sentences: dict            # counts: unique, train, heldout; the sources
    dims: dict                 # space -> input dimension
    glove_coverage: float      # fraction of tokens found in the GloVe vocabulary
    chance: dict               # R@k of a random ranking: k / heldout
    first_pair: dict           # before / after retrieval, losses
    third_space: dict          # per aligned space: before / after retrieval; losses; anchors
    settings: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def glove_sentence_vectors(sentences: Sequence[str], words: WordVectors) -> tuple[torch.Tensor, float]:
    """The mean GloVe vector of each sentence's known tokens [N, 50], and the fraction of tokens known."""
    index = {word: row for row, word in enumerate(words.words)}
    vectors, known, total = [], 0, 0
    for sentence in sentences:
        tokens = WORD.findall(sentence.lower())
        rows = [index[token] for token in tokens if token in index]
        known, total = known + len(rows), total + len(tokens)
        vectors.append(words.vectors[rows].mean(0) if rows else torch.zeros(words.vectors.shape[1]))
    return torch.stack(vectors), known / max(total, 1)


def encode_by_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
                     normalize: bool) -> torch.Tensor:
    """`encoders.encode` of `texts` batched in order of length (less padding, same embeddings up to rounding),
    returned in the order of `texts`."""
    from alignkit.represent.encoders import encode

    order = sorted(range(len(texts)), key=lambda row: len(texts[row]))
    embeddings = encode(model, tokenizer, [texts[row] for row in order], normalize=normalize)
    return embeddings[torch.tensor(order).argsort()]


def embed_sentences(sentences: Sequence[str], model: str) -> tuple[dict[str, torch.Tensor], float]:
    """The three frozen spaces of `sentences` (rows aligned) and the GloVe coverage; each encoder runs once.
    The causal LM runs without its LM head (`get_decoder()`): its last hidden state is the same."""
    from alignkit.models.loading import load
    from alignkit.represent.encoders import load_minilm
    from alignkit.represent.packages import glove_vectors

    with torch.no_grad():
        minilm, minilm_tokenizer = load_minilm()
        spaces = {"minilm": encode_by_length(minilm, minilm_tokenizer, sentences, normalize=True)}
        causal = load(model)
        spaces["smollm2"] = encode_by_length(causal.model.eval().get_decoder(), causal.tokenizer, sentences,
                                             normalize=False)
    spaces[THIRD], coverage = glove_sentence_vectors(sentences, glove_vectors())
    return spaces, coverage


def split_rows(spaces: dict[str, torch.Tensor], count: int) -> tuple[dict, dict]:
    """The first `count` rows of every space, and the rest."""
    return ({name: tensor[:count] for name, tensor in spaces.items()},
            {name: tensor[count:] for name, tensor in spaces.items()})


def align_first_pair(projector: OneEncoderProjector, train: dict[str, torch.Tensor],
                     heldout: dict[str, torch.Tensor], config: TrainConfig) -> dict:
    """Step 1: held-out retrieval of the first pair at initialisation, the training, and retrieval after."""
    before = pair_retrieval(projector, heldout, *FIRST_PAIR)
    losses = train_alignment(projector, train, [FIRST_PAIR], config)
    return {"pair": list(FIRST_PAIR), "before": before, "after": pair_retrieval(projector, heldout, *FIRST_PAIR),
            "loss_first": losses[0], "loss_last": losses[-1], "logit_scale": projector.logit_scale().item()}


def align_third_space(projector: OneEncoderProjector, train: dict[str, torch.Tensor],
                      heldout: dict[str, torch.Tensor], config: TrainConfig, anchors: Sequence[str]) -> dict:
    """Step 2: freeze the aligned projector, add the third space, train only its adapter and token against
    `anchors`; held-out retrieval against every aligned space before and after, and whether anything already
    aligned (UP, first-pair adapters and tokens, temperature) changed."""
    projector.extend(THIRD, train[THIRD].shape[1])
    frozen = aligned_state(projector)
    before = {other: pair_retrieval(projector, heldout, THIRD, other) for other in FIRST_PAIR}
    losses = align_new_space(projector, THIRD, train, anchors, config)
    after = {other: pair_retrieval(projector, heldout, THIRD, other) for other in FIRST_PAIR}
    unchanged = all(torch.equal(frozen[name], tensor) for name, tensor in aligned_state(projector).items())
    return {"anchors": list(anchors), "pairs": {other: {"before": before[other], "after": after[other]}
                                                for other in FIRST_PAIR},
            "loss_first": losses[0], "loss_last": losses[-1], "aligned_parameters_unchanged": unchanged}


def aligned_state(projector: OneEncoderProjector) -> dict[str, torch.Tensor]:
    """A copy of every tensor of the projector except the third space's adapter and token."""
    return {name: tensor.clone() for name, tensor in projector.state_dict().items() if THIRD not in name.split(".")}


def run_projection_demo(*, steps: int = 300, third_steps: int = 300, heldout: int = 300, seed: int = 0,
                        model: str = "smollm2-135m-instruct", anchors: Sequence[str] = ("minilm",),
                        config: ProjectorConfig = ProjectorConfig(), batch_size: int = 256,
                        lr: float = 1e-3, sentences: int | None = None) -> ProjectionDemo:
    """Gather and split the shipped sentences (all, or a random `sentences` of them drawn with `seed`), embed
    them once with the three frozen encoders, align the first pair (step 1), then the third space onto it
    (step 2), and report held-out R@1 / R@5 before and after."""
    if not anchors or not set(anchors) <= set(FIRST_PAIR):
        raise ValueError(f"anchors must be among {FIRST_PAIR}, got {list(anchors)}")
    if min(steps, third_steps) < 1 or batch_size < 2:
        raise ValueError("steps and third_steps must be at least 1 and batch_size at least 2")
    shipped = shipped_sentences()
    if sentences is not None and not heldout < sentences <= len(shipped):
        raise ValueError(f"sentences must be above heldout ({heldout}) and at most {len(shipped)}, got {sentences}")
    used = shipped if sentences is None else sorted(random.Random(seed).sample(shipped, sentences))
    split = split_sentences(used, heldout, seed)
    started = time.perf_counter()
    spaces, coverage = embed_sentences(split.train + split.heldout, model)
    embedded = time.perf_counter()
    train, held = split_rows(spaces, len(split.train))
    projector = OneEncoderProjector({name: spaces[name].shape[1] for name in FIRST_PAIR}, config, seed=seed)
    first = align_first_pair(projector, train, held, TrainConfig(steps, batch_size, lr, seed=seed))
    third = align_third_space(projector, train, held, TrainConfig(third_steps, batch_size, lr, seed=seed),
                              anchors)
    done = time.perf_counter()
    return ProjectionDemo(
        sentences={"unique": len(shipped), "used": len(used), "train": len(split.train),
                   "heldout": len(split.heldout), "sources": list(SOURCES)},
        dims={name: tensor.shape[1] for name, tensor in spaces.items()}, glove_coverage=coverage,
        chance={f"R@{k}": k / heldout for k in RECALL_KS}, first_pair=first, third_space=third,
        settings={"steps": steps, "third_steps": third_steps, "heldout": heldout, "seed": seed, "model": model,
                  "batch_size": batch_size, "lr": lr, "projector": asdict(config)},
        timings_s={"embed": round(embedded - started, 1), "train": round(done - embedded, 1)})
