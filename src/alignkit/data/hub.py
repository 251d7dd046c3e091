"""Datasets by Hugging Face Hub name, and the one hub reachability probe that models share.

A hub source is ``org/name[@config]`` (a split is picked with ``::split`` by `alignkit.data.records`):
any such name that is not an existing local path. It is read through ``datasets.load_dataset`` from a
local snapshot of the dataset repository:

1. the Hugging Face hub cache (``snapshot_download(..., local_files_only=True)``; no network);
2. else, only when `hub_reachable` answers within `PROBE_TIMEOUT_S`, a snapshot downloaded from the hub;
3. else a DataError saying the id is not a local path, not in the cache, and the hub is unreachable.

Loading the snapshot folder (not the hub id) lets datasets' packaged builders (parquet, json, csv) read
the files offline, without retrying unreachable URLs. `datasets` and `huggingface_hub` are imported only
when a hub source is read.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from alignkit.data.errors import DataError

if TYPE_CHECKING:
    from datasets import DatasetDict

CONFIG_SEPARATOR = "@"  # org/name@config; "@" never occurs in a hub repo name
PROBE_TIMEOUT_S = 3.0
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")
CONFIG_NAME = re.compile(r"[^\s/@:]+")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt", ".gguf")  # a missing file, not a hub id


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, config)`` for ``"org/name"`` or ``"org/name@config"``; None for anything else (a path
    starting with ``.``, ``/`` or ``~``, more than one ``/``, or a name ending in a data file suffix)."""
    repo_id, separator, config = text.partition(CONFIG_SEPARATOR)
    if not HUB_ID.fullmatch(repo_id) or repo_id.lower().endswith(FILE_SUFFIXES):
        return None
    if separator and not CONFIG_NAME.fullmatch(config):
        return None
    return repo_id, config if separator else None


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub endpoint accepts a TCP connection within `timeout_s` seconds, name lookup included
    (the probe runs in a daemon thread, so a hanging DNS lookup cannot stall the caller). False at once
    when ``HF_HUB_OFFLINE`` is set."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    address = (endpoint.hostname or "", endpoint.port or (80 if endpoint.scheme == "http" else 443))
    answered: list[bool] = []
    probe = threading.Thread(target=_connect, args=(address, timeout_s, answered), daemon=True)
    probe.start()
    probe.join(timeout_s)
    return bool(answered) and answered[0]


def _connect(address: tuple[str, int], timeout_s: float, answered: list[bool]) -> None:
    """Append whether a TCP connection to `address` succeeds within `timeout_s` to `answered`."""
    try:
        socket.create_connection(address, timeout=timeout_s).close()
    except (OSError, UnicodeError):
        answered.append(False)
    else:
        answered.append(True)


def load_hub_dataset(repo_id: str, config: str | None) -> DatasetDict:
    """Every split of hub dataset `repo_id` (config `config`, or its default), read from a local snapshot
    (see the module docstring); any failure is a DataError naming the dataset."""
    from datasets import get_dataset_config_names, load_dataset
    from datasets.exceptions import DatasetsError

    name = repo_id if config is None else f"{repo_id}{CONFIG_SEPARATOR}{config}"
    folder = dataset_snapshot(repo_id)
    try:
        return load_dataset(str(folder), name=config)
    except (ValueError, OSError, DatasetsError) as error:
        try:
            configs = get_dataset_config_names(str(folder))
        except (ValueError, OSError, DatasetsError):
            configs = []
        raise _load_problem(name, config, configs, error) from error


def _load_problem(name: str, config: str | None, configs: list[str], error: Exception) -> DataError:
    """Why hub dataset `name` did not load: an unknown config, a config left to choose, or `error`."""
    repo_id = name.partition(CONFIG_SEPARATOR)[0]
    if config is not None and configs and config not in configs:
        return DataError(f"{name}: no config {config!r}; it holds {configs}")
    if config is None and len(configs) > 1:
        return DataError(f"{name}: holds configs {configs}; choose one as '{repo_id}{CONFIG_SEPARATOR}<config>'")
    return DataError(f"{name}: cannot load the dataset ({type(error).__name__}: {_first_line(error)})")


def _first_line(error: Exception) -> str:
    """The first line of `error`'s message (datasets' messages go on with usage examples)."""
    return str(error).strip().splitlines()[0] if str(error).strip() else repr(error)


def dataset_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of hub dataset repo `repo_id`: from the hub cache, else downloaded when the
    hub is reachable; else a DataError saying why it cannot be had."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except HFValidationError as error:
        raise DataError(f"{repo_id}: no such file or folder, and not a valid hub dataset id ({error})") from error
    except LocalEntryNotFoundError:
        pass
    if not hub_reachable():
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
               else f"could not connect to {constants.ENDPOINT} within {PROBE_TIMEOUT_S:g} s")
        raise DataError(f"{repo_id}: not a local path, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
                        f"and the hub is unreachable ({why}). Pass a local file or folder, or load the dataset "
                        "once with network access so that it is cached.")
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset"))
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise DataError(f"{repo_id}: not a local path, and the Hugging Face hub could not provide it as a "
                        f"dataset ({type(error).__name__}: {_first_line(error)})") from error

