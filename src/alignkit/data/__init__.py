"""Data layer: load training rows (preference pairs and the other formats) from files or datasets,
validate them, tokenize them and batch them.

Imports nothing else from alignkit.
"""

from alignkit.data.collation import collate_pairs, collate_shared_prefix, pair_tokens
from alignkit.data.errors import DataError
from alignkit.data.examples import Example, load_examples
from alignkit.data.preferences import PreferenceExample, load_preferences
from alignkit.data.records import Record, load_records
from alignkit.data.tokenization import (
    TokenizedExample,
    TokenizedPair,
    TruncationConfig,
    TruncationReport,
    template_fingerprint,
    tokenize_examples,
    tokenize_preferences,
)

__all__ = [
    "DataError",
    "Example",
    "PreferenceExample",
    "Record",
    "TokenizedExample",
    "TokenizedPair",
    "TruncationConfig",
    "TruncationReport",
    "collate_pairs",
    "collate_shared_prefix",
    "pair_tokens",
    "load_examples",
    "load_preferences",
    "load_records",
    "template_fingerprint",
    "tokenize_examples",
    "tokenize_preferences",
]
