"""A GPU node's own Python, for the tests: PyTorch is there, TensorFlow, TensorBoard,
pytorch-msssim and submitit are not, and the project is not installed.

A test puts this folder first on PYTHONPATH (with `src` and the repository root, as on a node
where the project is not installed); Python imports this module at start-up in every process
of the run. From then on the path finder finds none of HIDDEN's modules and none of their
distributions: importing one fails as for a missing package, `importlib.util.find_spec` says
None, and `importlib.metadata` knows no version of it. The project's own editable install is
taken away too (its finder and its distribution): `denoisebench` comes from PYTHONPATH's `src`.
"""

from __future__ import annotations

import sys
from importlib.machinery import PathFinder

HIDDEN = (
    "tensorflow",
    "tensorboard",
    "keras",
    "tf_keras",
    "tensorflow_datasets",
    "pytorch_msssim",
    "submitit",
)
HIDDEN_DISTRIBUTIONS = {
    "tensorflow", "tensorflow-cpu", "tensorboard", "keras", "tf-keras", "tensorflow-datasets",
    "pytorch-msssim", "submitit", "denoisebench",
}  # fmt: skip


class PathFinderWithout(PathFinder):
    """The standard path finder, blind to HIDDEN."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.partition(".")[0] in HIDDEN:
            return None
        return super().find_spec(fullname, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        for dist in super().find_distributions(*args, **kwargs):
            name = (dist.metadata["Name"] or "").lower().replace("_", "-")
            if name not in HIDDEN_DISTRIBUTIONS:
                yield dist


sys.meta_path[:] = [
    PathFinderWithout if f is PathFinder else f
    for f in sys.meta_path
    if not type(f).__module__.startswith("__editable__")  # the project's editable install
]
