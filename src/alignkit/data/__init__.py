"""Data layer: load preference data from files or datasets, validate it, tokenize it and batch it.

Imports nothing else from alignkit.
"""

from alignkit.data.collation import collate_pairs, collate_shared_prefix, pair_tokens
from alignkit.data.errors import DataError
from alignkit.data.preferences import PreferenceExample, load_preferences
from alignkit.data.records import Record, load_records
from alignkit.data.tokenization import (
    TokenizedPair,
    TruncationConfig,
    TruncationReport,
    template_fingerprint,
    tokenize_preferences,
)

__all__ = [
    "DataError",
    "PreferenceExample",
    "Record",
    "TokenizedPair",
    "TruncationConfig",
    "TruncationReport",
    "collate_pairs",
    "collate_shared_prefix",
    "pair_tokens",
    "load_preferences",
    "load_records",
    "template_fingerprint",
    "tokenize_preferences",
]
