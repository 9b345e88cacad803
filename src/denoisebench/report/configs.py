"""The config a run really used, for the report: config.json with what was settled only once
the data was loaded.

data.n_train and data.n_test in config.json are the profile's figures, which set only the
proportion of the split: a data source with fewer images (the built-in photographs, a --limit)
is split in that proportion, and the run's data.json records the counts it used. The report
shows those counts, and says where the config's own figures went.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from denoisebench.core.records import read_json


def resolved_config(folder: Path) -> tuple[dict[str, Any], str]:
    """A run folder's config with the split sizes it used (data.json), and one line saying
    what was changed from config.json, or why nothing could be."""
    config = read_json(folder / "config.json")
    data = config.get("data")
    path = folder / "data.json"
    try:
        used = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        used = None
    counts = (used or {}).get("train"), (used or {}).get("test")
    if not isinstance(data, dict) or not all(isinstance(n, int) for n in counts):
        return config, (
            "As written in config.json: the run folder has no readable data.json, so "
            "data.n_train and data.n_test are the profile's figures (the split's proportion), "
            "not necessarily the split the run used."
        )
    resolved = copy.deepcopy(config)
    asked = data.get("n_train"), data.get("n_test")
    resolved["data"]["n_train"], resolved["data"]["n_test"] = counts
    images = used.get("images") if used else None
    of = f" of {images} images" if isinstance(images, int) else ""
    if asked == counts:
        change = f"data.n_train {counts[0]} and data.n_test {counts[1]}, as config.json asked"
    else:
        change = (
            f"data.n_train {counts[0]} and data.n_test {counts[1]}{of} (data.json), where "
            f"config.json has {asked[0]} and {asked[1]}: those set only the split's proportion"
        )
    return resolved, (
        f"As the run used it: {change}. Runtime settings as each framework applied them: "
        "the Environment table's runtime column."
    )
