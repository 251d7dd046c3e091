"""Data layer: load training rows of every format from files or datasets, validate them, render prompts,
tokenize and batch them.

Imports nothing else from alignkit.
"""

from alignkit.data.collation import collate_rows, collate_shared_prefix, sequence_token_count
from alignkit.data.errors import DataError
from alignkit.data.examples import FORMAT_FIELDS, Example, load_examples
from alignkit.data.prompts import Content, Prompt, prompt_text, render_prompt, text_of
from alignkit.data.records import Record, load_records
from alignkit.data.rows import RowProblem, collect, read_prompts
from alignkit.data.tokenization import (
    TokenizedExample,
    TruncationConfig,
    TruncationReport,
    template_fingerprint,
    tokenize_examples,
)

__all__ = [
    "Content",
    "DataError",
    "Example",
    "FORMAT_FIELDS",
    "Prompt",
    "Record",
    "RowProblem",
    "TokenizedExample",
    "TruncationConfig",
    "TruncationReport",
    "collate_rows",
    "collate_shared_prefix",
    "collect",
    "load_examples",
    "load_records",
    "prompt_text",
    "read_prompts",
    "render_prompt",
    "sequence_token_count",
    "template_fingerprint",
    "text_of",
    "tokenize_examples",
]
