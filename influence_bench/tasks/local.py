"""A task on a user's own arrays: ``local:MODEL:PATH.npz`` (or ``local_task(path, model)``).

The ``.npz`` holds ``x_train``, ``y_train``, ``x_test``, ``y_test`` (given split, kept in order);
inputs are flattened to [n, d] and standardised on the training part. Integer labels make a
classification task (cross-entropy, classes 0..C-1); float targets a regression one (squared
error, targets standardised). ``MODEL`` is one of the built-in factories (``tasks.models.MODELS``),
sized to the data's inputs and outputs; the recipe is digits-mlp's unless given. The task's name
is ``local-STEM-MODEL``; its fingerprint covers the file's arrays, so a changed file is another
ground truth.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from influence_bench.tasks.models import MODELS, named_model
from influence_bench.tasks.spec import TaskSpec, TrainingRecipe

KEYS = ("x_train", "y_train", "x_test", "y_test")


class LocalDataError(ValueError):
    """A local data file that cannot make a task: the message says what to fix."""


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of ``path``, checked: present, numeric, matching lengths, labels or targets."""
    if not path.is_file():
        raise LocalDataError(f"no data file {path}: give an .npz with {', '.join(KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise LocalDataError(f"{path} lacks {', '.join(missing)}; it has {', '.join(f.files) or 'no arrays'} "
                                     f"(save with np.savez(path, {'=..., '.join(KEYS)}=...))")
            arrays = {k: np.asarray(f[k]) for k in KEYS}
    except LocalDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: say so
        raise LocalDataError(f"cannot read {path} as an .npz ({type(exc).__name__}: {exc})") from None
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if len(x) != len(y) or len(x) == 0:
            raise LocalDataError(f"{path}: x_{part} has {len(x)} rows, y_{part} {len(y)}; they must match and be > 0")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise LocalDataError(f"{path}: x_train rows are {arrays['x_train'].shape[1:]}, x_test rows "
                             f"{arrays['x_test'].shape[1:]}")
    for k in KEYS:
        if not (np.issubdtype(arrays[k].dtype, np.number) or arrays[k].dtype == bool):
            raise LocalDataError(f"{path}: {k} is {arrays[k].dtype}, not numeric")
    return arrays


def local_task(path: str | Path, model: str = "mlp", recipe: TrainingRecipe | None = None,
               version: int = 1) -> TaskSpec:
    """A task on the arrays of ``path`` with the built-in factory ``model``."""
    from influence_bench.tasks.digits_mlp import DIGITS_MLP

    path = Path(path).resolve()
    if model not in MODELS:
        raise LocalDataError(f"unknown model {model!r}; the built-in factories are {', '.join(MODELS)}")
    arrays = read_arrays(path)
    x_train = arrays["x_train"].reshape(len(arrays["x_train"]), -1).astype(np.float64)
    x_test = arrays["x_test"].reshape(len(arrays["x_test"]), -1).astype(np.float64)
    y_train, y_test = arrays["y_train"], arrays["y_test"]
    classification = np.issubdtype(y_train.dtype, np.integer) and np.issubdtype(y_test.dtype, np.integer)
    if classification:
        if y_train.ndim != 1 or y_test.ndim != 1 or min(y_train.min(), y_test.min()) < 0:
            raise LocalDataError(f"{path}: integer labels must be one class index >= 0 per row")
        n_outputs = int(max(y_train.max(), y_test.max())) + 1
        y = np.concatenate([y_train, y_test]).astype(np.int64)
        loss = "mean cross-entropy"
    else:
        y = np.concatenate([y_train.reshape(len(y_train), -1), y_test.reshape(len(y_test), -1)]).astype(np.float64)
        n_outputs = y.shape[1]
        loss = "mean squared-error"
    x = np.concatenate([x_train, x_test])
    try:
        factory = named_model(model, x.shape[1], n_outputs)
    except ValueError as exc:
        raise LocalDataError(f"{path}: {exc}") from None
    recipe = dataclasses.replace(recipe or DIGITS_MLP.recipe, loss=loss)
    return TaskSpec(
        name=f"local-{path.stem}-{model}",
        version=version,
        description=f"{path.name}: {len(x_train)} training and {len(x_test)} test points, "
                    f"{'classes' if classification else 'targets'} {n_outputs}, model {model}",
        dataset=f"local file {path.name}",
        model=factory,
        recipe=recipe,
        load_arrays=lambda: (x, y),
        train_size=len(x_train),
        source=f"local:{model}:{path}",
    )


def parse_reference(reference: str) -> tuple[str, Path]:
    """``local:MODEL:PATH`` -> (MODEL, PATH)."""
    body = reference.removeprefix("local:")
    model, sep, path = body.partition(":")
    if not sep or not path:
        raise LocalDataError(f"{reference!r}: name a local task as local:MODEL:PATH.npz, MODEL one of "
                             f"{', '.join(MODELS)}")
    return model, Path(path)


def task_from_reference(reference: str) -> TaskSpec:
    """The task ``local:MODEL:PATH`` names, registered under its name (its workers find it by ``source``)."""
    from influence_bench.tasks import TASKS, register_task

    model, path = parse_reference(reference)
    spec = local_task(path, model)
    known = TASKS.get(spec.name)
    if known is not None and known.fingerprint == spec.fingerprint and known.data_fingerprint == spec.data_fingerprint:
        return known
    TASKS.pop(spec.name, None)
    from influence_bench.tasks import TASK_VERSIONS

    TASK_VERSIONS.pop(spec.key, None)
    return register_task(spec, f"local data file {path}")
