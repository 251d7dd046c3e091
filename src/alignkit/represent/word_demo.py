"""Demonstration: align GloVe 6B 50-d word vectors with SmolLM2-135M-Instruct's input embeddings (576-d).

The two "languages" are two embedding spaces of English words, so a word's translation is the same word:
- source: the `source_vocab` most frequent GloVe words (Pennington et al. 2014, "GloVe: Global Vectors for Word
  Representation"), in GloVe's frequency order;
- target: every SmolLM2 token that is a space marker followed by lower-case ASCII letters ("Ġword"), i.e. a
  word as it appears mid-sentence after a space (GloVe's words are lower-cased running-text words; the tokens
  without the marker are mostly word pieces), in token-id order (BPE merge order, which roughly follows
  frequency), with their rows of the input embedding matrix.

The dictionary is the words in both vocabularies in GloVe order: the first `train_words` train, the next
`test_words` test (the frequency split of MUSE's dictionaries `en-xx.0-5000.txt` / `en-xx.5000-6500.txt`,
used by the Sinhala-English alignment benchmark's `muse_content/run.sh`, Wickramasinghe and de Silva 2023,
PACLIC 2023.paclic-1.42). Both spaces are preprocessed unit, center, unit. Rows reported, each by held-out
P@1/5/10 over the whole target vocabulary, by nearest neighbour and by CSLS:
- unaligned: a seeded Haar-random semi-orthogonal map 50 → 576 (the widths differ, so "no map" is undefined;
  this is chance-level retrieval, about 1/len(target) at P@1);
- least squares on the train pairs (Mikolov et al. 2013, arXiv 1309.4168);
- Procrustes on the train pairs, semi-orthogonal W [576, 50] (the demo's choice), and with PCA of SmolLM2's
  side down to 50-d (`reduction="pca"`) for comparison;
- iterative refinement (Conneau et al. 2018, "Word Translation Without Parallel Data", arXiv 1710.04087,
  Section 2.2) from the identical-strings seed, no dictionary; CSLS is that paper's Eq. 6. Here
  identical strings are the gold relation itself, so the seed (all shared words except the test words) is
  large and clean: this row shows the procedure, not a hard unsupervised case.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedTokenizerBase

from alignkit.models.loading import load, load_tokenizer, resolve
from alignkit.represent.packages import WordVectors, glove_vectors
from alignkit.represent.spaces import (REDUCTIONS, Alignment, evaluate, identical_strings, least_squares, preprocess,
                                       procrustes, random_orthogonal, refine)

TOKEN_WORD = re.compile(r"^[Ġ▁]([a-z]+)$")  # byte-level BPE (Ġ) or SentencePiece (▁) space marker + a word


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the GloVe ↔ SmolLM2 alignment demonstration."""

    target: str = "smollm2-135m-instruct"
    source_vocab: int = 20000
    target_vocab: int | None = None  # the first N target words by token id; None: all
    train_words: int = 5000
    test_words: int = 1500
    iterations: int = 5
    top_n: int = 10000
    csls_k: int = 10
    reduction: str = "semi-orthogonal"
    seed: int = 0
    batch_size: int = 1024

    def check(self) -> None:
        """ValueError for settings that cannot work, before anything is loaded."""
        if self.target_vocab is not None and self.target_vocab < 1:
            raise ValueError(f"target_vocab: must be at least 1 (or None for all), got {self.target_vocab}")
        for name in ("source_vocab", "train_words", "test_words", "top_n", "csls_k", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.iterations < 0:
            raise ValueError(f"iterations: must be at least 0, got {self.iterations}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction: unknown {self.reduction!r}; choose from {', '.join(REDUCTIONS)}")
        if self.train_words + self.test_words > self.source_vocab:
            raise ValueError(f"train_words + test_words ({self.train_words + self.test_words}) exceed "
                             f"source_vocab ({self.source_vocab})")


def input_embeddings(name: str) -> tuple[PreTrainedTokenizerBase, torch.Tensor]:
    """A model's tokenizer and input embedding matrix [vocab, d]: read alone from `model.safetensors` when the
    model is a folder that has one, else from the loaded model."""
    from safetensors import safe_open

    folder, tokenizer = resolve(name), load_tokenizer(name)
    weights = folder / "model.safetensors"
    if folder.is_dir() and weights.exists():
        with safe_open(str(weights), framework="pt") as file:
            names = [key for key in file.keys() if key.endswith("embed_tokens.weight")]
            if names:
                return tokenizer, file.get_tensor(names[0]).float()
    return tokenizer, load(name).model.get_input_embeddings().weight.detach().float()


def token_words(tokenizer: PreTrainedTokenizerBase, embeddings: torch.Tensor,
                limit: int | None = None) -> WordVectors:
    """The tokens that are a space marker plus a lower-case word, as words, with their embedding rows; the first
    `limit` of them in token-id order (all when None)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), embeddings.shape[0]))))
    found = [(index, match.group(1)) for index, token in enumerate(tokens) if (match := TOKEN_WORD.match(token))]
    if not found:
        raise ValueError("no token of the form <space marker><lower-case word> in the tokenizer")
    found = found[:limit]
    rows = torch.tensor([index for index, _ in found])
    return WordVectors([word for _, word in found], embeddings[rows].float())


def split_dictionary(pairs: torch.Tensor, train: int, test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `train` pairs and the `test` after them (pairs in source frequency order)."""
    if train + test > len(pairs):
        raise ValueError(f"only {len(pairs)} words are in both vocabularies; train + test = {train + test}")
    return pairs[:train], pairs[train:train + test]


def dictionary_summary(pairs: torch.Tensor, source: WordVectors, target: WordVectors,
                       test_pairs: torch.Tensor) -> dict:
    """Size of an induced dictionary, its fraction of identical-word pairs, and its pairs on test words."""
    identical = sum(source.words[i] == target.words[j] for i, j in pairs.tolist())
    on_test = torch.isin(pairs[:, 0], test_pairs[:, 0]).sum().item()
    return {"pairs": len(pairs), "identical_fraction": round(identical / max(len(pairs), 1), 4),
            "test_source_words": on_test}


def fit_and_score(config: DemoConfig, source: torch.Tensor, target: torch.Tensor, train: torch.Tensor,
                  test: torch.Tensor, seed: torch.Tensor) -> tuple[dict, dict, list[torch.Tensor]]:
    """Every method fitted and evaluated on the test pairs: (scores by method, seconds by method, the
    refinement's dictionaries)."""
    x, y = source[train[:, 0]], target[train[:, 1]]
    dictionaries: list[torch.Tensor] = []

    def refined() -> Alignment:
        alignment, used = refine(source, target, seed, iterations=config.iterations, top_n=config.top_n,
                                 csls_k=config.csls_k, reduction=config.reduction, batch_size=config.batch_size)
        dictionaries.extend(used)
        return alignment

    builders = {
        "unaligned (random semi-orthogonal map)":
            lambda: Alignment(random_orthogonal(target.shape[1], source.shape[1], config.seed)),
        "least squares": lambda: least_squares(x, y),
        "procrustes (semi-orthogonal)": lambda: procrustes(x, y, "semi-orthogonal"),
        "procrustes (pca of the wider side)": lambda: procrustes(x, y, "pca"),
        f"refinement from identical strings ({config.reduction})": refined,
    }
    scores, seconds = {}, {}
    for name, build in builders.items():
        began = time.perf_counter()
        scores[name] = evaluate(build(), source, target, test, csls_k=config.csls_k, batch_size=config.batch_size)
        seconds[name] = round(time.perf_counter() - began, 1)
    return scores, seconds, dictionaries


def run_demo(config: DemoConfig = DemoConfig()) -> dict:
    """Run the demonstration; returns a JSON-ready dict (settings, spaces, dictionary, methods, wall_s)."""
    config.check()
    start = time.perf_counter()
    source_words = glove_vectors(config.source_vocab)
    target_words = token_words(*input_embeddings(config.target), limit=config.target_vocab)
    source, target = preprocess(source_words.vectors), preprocess(target_words.vectors)
    shared = identical_strings(source_words.words, target_words.words)
    train, test = split_dictionary(shared, config.train_words, config.test_words)
    seed = shared[~torch.isin(shared[:, 0], test[:, 0])]
    loaded_s = time.perf_counter() - start
    methods, seconds, dictionaries = fit_and_score(config, source, target, train, test, seed)
    return {
        "settings": asdict(config),
        "spaces": {"source": {"name": "glove-6b-50d", "words": len(source_words.words), "dim": source.shape[1]},
                   "target": {"name": config.target, "words": len(target_words.words), "dim": target.shape[1],
                              "word_form": "token = space marker + lower-case word (' word')"}},
        "dictionary": {"shared_words": len(shared), "train": len(train), "test": len(test),
                       "test_words_first_last": [source_words.words[test[0, 0]], source_words.words[test[-1, 0]]]},
        "chance_p@1": 1 / len(target_words.words),
        "methods": methods,
        "refinement": [dictionary_summary(pairs, source_words, target_words, test) for pairs in dictionaries],
        "seconds": {"load": round(loaded_s, 1), **seconds},
        "wall_s": round(time.perf_counter() - start, 1),
    }


def results_table(result: dict) -> str:
    """The held-out P@1/5/10 of every method as a Markdown table (percent)."""
    lines = ["| method | NN P@1 | NN P@5 | NN P@10 | CSLS P@1 | CSLS P@5 | CSLS P@10 |", "|---" * 7 + "|"]
    for name, scores in result["methods"].items():
        cells = [f"{100 * scores[c][f'p@{k}']:.1f}" for c in ("nn", "csls") for k in (1, 5, 10)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
