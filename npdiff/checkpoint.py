"""Versioned ``.npz`` checkpoints: written atomically, read with ``allow_pickle=False``.

One file holds everything needed to sample from a model or to resume its training exactly:

    format_version                    int, FORMAT_VERSION
    meta                              a JSON string: model and schedule configuration, step, RNG state,
                                      optimizer counters, EMA decay, user facts (``meta=``)
    param/<dotted name>               each model parameter (the live weights, not the EMA)
    optimizer/m, optimizer/v          Adam moments, flat (P,)
    ema/shadow                        the EMA weights, flat (P,)
    <group>/<key>                     named groups of arrays (the training loop keeps its batch order
                                      and its history there)

Writing goes to a temporary file in the same folder, then ``os.replace`` renames it over the target,
so a crash mid-write never leaves a truncated checkpoint. Loading never unpickles; a missing file,
a file that is not a checkpoint, a newer format, or a model whose parameters differ all raise with
a message that says which.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from npdiff import backend
from npdiff.models import Denoiser
from npdiff.schedules import Schedule

FORMAT_VERSION = 1
IGNORED_CONFIG = ("seed", "dtype")  # the init seed is overwritten; weights convert to the model's dtype


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's meta")


def save(path, model, *, optimizer=None, ema=None, step: int = 0, rng=None, schedule=None,
         meta: dict | None = None, groups: dict | None = None) -> None:
    """Write a checkpoint of ``model`` (and whatever else is given) atomically to ``path``."""
    path = os.fspath(path)
    arrays = {"format_version": np.array(FORMAT_VERSION)}
    info = {"step": int(step), "model_config": getattr(model, "config", None),
            "schedule_config": None if schedule is None else schedule.config, "meta": meta or {}}
    for name, value in model.parameters().items():
        arrays[f"param/{name}"] = backend.to_numpy(value)
    if optimizer is not None:
        state = optimizer.state_dict()
        arrays["optimizer/m"], arrays["optimizer/v"] = state["m"], state["v"]
        info["optimizer"] = {"type": type(optimizer).__name__, "steps": int(state["steps"]), "lr": optimizer.lr}
    if ema is not None:
        arrays["ema/shadow"] = backend.to_numpy(ema.shadow)
        info["ema_decay"] = ema.decay
    if rng is not None:
        info["rng_state"] = rng.bit_generator.state
    for group, values in (groups or {}).items():
        for key, value in values.items():
            arrays[f"{group}/{key}"] = np.asarray(value)
    arrays["meta"] = np.array(json.dumps(info, default=_json_default))
    tmp = f"{path}.tmp-{os.getpid()}"  # same folder, so the rename below is atomic
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``info`` (the decoded meta) and ``arrays`` (every stored array by key)."""

    path: str
    info: dict
    arrays: dict

    @property
    def step(self) -> int:
        return int(self.info["step"])

    def group(self, name: str) -> dict:
        """The arrays stored under ``name/``, keyed without the prefix (0-d arrays as Python scalars)."""
        prefix = f"{name}/"
        return {k[len(prefix):]: (v.item() if v.ndim == 0 else v) for k, v in self.arrays.items()
                if k.startswith(prefix)}

    def _ema_shadow(self):
        if "ema/shadow" not in self.arrays:
            raise ValueError(f"{self.path}: no EMA weights stored")
        return self.arrays["ema/shadow"]

    def restore(self, model, *, optimizer=None, ema=None, rng=None, use_ema: bool = False) -> None:
        """Copy the stored state into existing objects. ``use_ema`` loads the EMA weights into the model."""
        params = self.group("param")
        mine = model.parameters()
        if set(params) != set(mine):
            missing, extra = sorted(set(mine) - set(params)), sorted(set(params) - set(mine))
            raise ValueError(f"{self.path}: parameters do not match the model (missing {missing}, unexpected {extra})")
        config, stored = getattr(model, "config", None), self.info["model_config"]
        if config is not None and stored is not None:
            diff = {k: (stored.get(k), v) for k, v in config.items()
                    if k not in IGNORED_CONFIG and stored.get(k) != v}
            if diff:
                raise ValueError(f"{self.path}: model configuration differs (checkpoint, model): {diff}")
        for name, value in mine.items():
            if tuple(params[name].shape) != tuple(value.shape):
                raise ValueError(f"{self.path}: parameter {name} has shape {params[name].shape}, "
                                 f"the model's has {value.shape}")
            value[...] = backend.asarray(params[name], dtype=value.dtype)
        if use_ema:
            model.flat_params[...] = backend.asarray(self._ema_shadow(), dtype=model.flat_params.dtype)
        if optimizer is not None:
            if "optimizer" not in self.info:
                raise ValueError(f"{self.path}: no optimizer state stored")
            optimizer.load_state_dict({"m": self.arrays["optimizer/m"], "v": self.arrays["optimizer/v"],
                                       "steps": self.info["optimizer"]["steps"]})
        if ema is not None:
            ema.shadow[...] = backend.asarray(self._ema_shadow(), dtype=ema.shadow.dtype)
        if rng is not None:
            if "rng_state" not in self.info:
                raise ValueError(f"{self.path}: no random-generator state stored")
            rng.bit_generator.state = self.info["rng_state"]


def load(path) -> Checkpoint:
    """Read and validate a checkpoint (``allow_pickle=False``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path!r} is not a readable npdiff checkpoint (corrupt or not an .npz): {exc}") from exc
    if "format_version" not in arrays or "meta" not in arrays:
        raise ValueError(f"{path!r} is an .npz file but not an npdiff checkpoint (no format_version/meta)")
    version = int(arrays.pop("format_version"))
    if version != FORMAT_VERSION:
        raise ValueError(f"{path!r} has checkpoint format {version}; this npdiff reads format {FORMAT_VERSION}")
    try:
        info = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path!r}: the checkpoint's meta is not valid JSON: {exc}") from exc
    return Checkpoint(path, info, arrays)


def load_model(path, *, use_ema: bool = True):
    """Rebuild the denoiser and its schedule from a checkpoint -> (model, schedule or None).

    use_ema: load the EMA weights when the checkpoint has them (what one samples from).
    """
    ckpt = load(path)
    if ckpt.info["model_config"] is None:
        raise ValueError(f"{ckpt.path}: no model configuration stored; build the model and use restore()")
    model = Denoiser(**ckpt.info["model_config"])
    ckpt.restore(model, use_ema=use_ema and "ema/shadow" in ckpt.arrays)
    config = ckpt.info["schedule_config"]
    return model, (None if config is None else Schedule(**config))
