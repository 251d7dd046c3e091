"""Datasets by Hub name (`org/name[@config][::split]`), read offline from a temporary Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.data import DataError, load_examples, load_records
from alignkit.data.hub import hub_reachable, parse_hub_id
from alignkit.data.records import load_prompt_records

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PAIRS = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
CONFIGS_README = """---
configs:
- config_name: small
  data_files:
  - split: train
    path: small/train-*.parquet
- config_name: large
  data_files:
  - split: train
    path: large/train-*.parquet
---
# two configs
"""


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty HF hub cache (and datasets cache) under tmp_path, used by every hub call of the test."""
    import datasets.config
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import, so patch the constant too
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    return cache


def parquet_bytes(rows: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def cache_dataset(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Write dataset repo `repo_id` into the hub cache as huggingface_hub does: blobs, a snapshot of
    relative symlinks to them, and refs/main naming the snapshot's commit."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def test_parse_hub_id():
    assert parse_hub_id("trl-lib/ultrafeedback_binarized") == ("trl-lib/ultrafeedback_binarized", None)
    assert parse_hub_id("HuggingFaceH4/ultrafeedback_binarized@default") == (
        "HuggingFaceH4/ultrafeedback_binarized", "default")
    assert parse_hub_id("org/name.v2@20231101.en") == ("org/name.v2", "20231101.en")
    for not_hub in ("prefs.jsonl", "./org/name", "/abs/path", "~/org/name", "a/b/c", "org/prefs.jsonl",
                    "org/name@", "org/name@a@b", "org/"):
        assert parse_hub_id(not_hub) is None, not_hub


def test_plain_dataset_from_cache(hub_cache):
    cache_dataset(hub_cache, "org/plain", {"data/train-00000-of-00001.parquet": parquet_bytes(PAIRS)})
    records = load_records("org/plain")
    assert [record.data for record in records] == PAIRS
    assert [record.where for record in records] == [f"org/plain::train, row {i}" for i in (1, 2, 3)]
    assert [record.data for record in load_records("org/plain::train")] == PAIRS
    assert [record.data["prompt"] for record in load_prompt_records("org/plain")] == ["q0", "q1", "q2"]


def test_two_splits_need_a_split(hub_cache):
    cache_dataset(hub_cache, "org/two", {"data/train-00000-of-00001.parquet": parquet_bytes(PAIRS),
                                         "data/test-00000-of-00001.parquet": parquet_bytes(PAIRS[:1])})
    with pytest.raises(DataError, match=r"org/two: holds splits \['test', 'train'\]; choose one as 'org/two::<split>'"):
        load_records("org/two")
    test = load_records("org/two::test")
    assert [record.data for record in test] == PAIRS[:1] and test[0].where == "org/two::test, row 1"
    with pytest.raises(DataError, match=r"org/two: no split 'dev'; it holds \['test', 'train'\]"):
        load_records("org/two::dev")


def test_config_name_picks_the_readme_config(hub_cache):
    cache_dataset(hub_cache, "org/configs", {"README.md": CONFIGS_README.encode(),
                                             "small/train-00000.parquet": parquet_bytes(PAIRS[:1]),
                                             "large/train-00000.parquet": parquet_bytes(PAIRS)})
    small = load_records("org/configs@small::train")
    assert [record.data for record in small] == PAIRS[:1]
    assert small[0].where == "org/configs@small::train, row 1"
    assert len(load_records("org/configs@large")) == 3
    with pytest.raises(DataError, match=r"org/configs@tiny: no config 'tiny'; it holds \['small', 'large'\]"):
        load_records("org/configs@tiny")
    with pytest.raises(DataError, match=r"org/configs: holds configs .*; choose one as 'org/configs@<config>'"):
        load_records("org/configs")


def test_conversational_preference_rows_train_load(hub_cache):
    rows = [{"chosen": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello!"}],
             "rejected": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Go away."}],
             "score_chosen": 8.0} for i in range(4)]
    cache_dataset(hub_cache, "org/conv", {"data/train_prefs-00000-of-00001.jsonl": jsonl_bytes(rows),
                                          "data/test_prefs-00000-of-00001.jsonl": jsonl_bytes(rows[:2])})
    examples = load_examples("org/conv@default::train_prefs", "preference")
    assert len(examples) == 4 and all(example.conversational for example in examples)
    assert examples[1].prompt == [{"role": "user", "content": "Hi 1"}]
    assert examples[1].slot("rejected") == ([{"role": "assistant", "content": "Go away."}],)
    assert examples[0].where == "org/conv@default::train_prefs, row 1"


def test_bad_hub_rows_name_dataset_split_and_row(hub_cache):
    rows = [PAIRS[0], {"prompt": "p", "chosen": "", "rejected": "b"}]
    cache_dataset(hub_cache, "org/bad", {"data/train-00000-of-00001.parquet": parquet_bytes(rows)})
    with pytest.raises(DataError, match=r"^org/bad::train, row 2, field 'chosen': empty completion"):
        load_examples("org/bad", "preference")


def test_uncached_dataset_offline_fails_fast_and_clearly(hub_cache):
    start = time.monotonic()
    with pytest.raises(DataError) as caught:
        load_examples("trl-lib/ultrafeedback_binarized::train", "preference")
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert message.startswith("trl-lib/ultrafeedback_binarized: not a local path, not in the Hugging Face cache")
    assert "the hub is unreachable (HF_HUB_OFFLINE is set)" in message


def test_uncached_dataset_with_hub_unreachable_fails_within_the_probe(hub_cache, monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    start = time.monotonic()
    with pytest.raises(DataError, match=r"org/absent: not a local path.*hub is unreachable \(could not connect"):
        load_records("org/absent")
    assert time.monotonic() - start < 5


def test_probe_is_bounded_by_its_timeout(monkeypatch):
    import socket

    from huggingface_hub import constants

    assert not hub_reachable()  # HF_HUB_OFFLINE=1 in the tests: no probe at all

    def hanging_lookup(address, timeout):  # a name lookup that ignores the socket timeout
        time.sleep(3)
        raise OSError("no route")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", hanging_lookup)
    start = time.monotonic()
    assert not hub_reachable(timeout_s=0.5)
    assert time.monotonic() - start < 2


def test_models_share_the_probe(monkeypatch):
    import alignkit.data.hub
    from alignkit.models import loading

    asked = []
    monkeypatch.setattr(alignkit.data.hub, "hub_reachable", lambda timeout_s: asked.append(timeout_s) or True)
    assert loading._hub_reachable() is True and asked == [3.0]


def test_local_paths_are_not_hub_ids(tmp_path, hub_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="org/prefs.jsonl: no such file or folder"):
        load_records("org/prefs.jsonl")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "local.jsonl").write_text(json.dumps(PAIRS[0]) + "\n")
    os.symlink("local.jsonl", tmp_path / "org" / "name")  # an existing local path wins over the hub
    with pytest.raises(DataError, match="unsupported file type ''"):
        load_records("org/name")
