"""Versioned ``.npz`` checkpoints: written atomically, read with ``allow_pickle=False``, validated on load.

One file holds everything needed to sample from a model or to resume its training exactly:

    format_version                    int, FORMAT_VERSION
    meta                              a JSON string: model and schedule configuration, step, RNG state,
                                      optimizer counters, EMA decay, user facts (``meta=``)
    param/<dotted name>               each model parameter (the live weights, not the EMA)
    optimizer/m, optimizer/v          Adam moments, flat (P,)
    ema/shadow                        the EMA weights, flat (P,)
    <group>/<key>                     named groups of arrays (the training loop keeps its batch order
                                      and its history there)

Writing goes through ``npdiff.io.fileio.replacing`` (a temporary file in the same folder, fsync, rename),
so a crash or a full disk mid-write never leaves a truncated checkpoint or harms the previous one.
Loading never unpickles and treats the file as untrusted: whatever its bytes, ``load`` and
``load_model`` either succeed or raise FileNotFoundError / ValueError with a message naming the file
and what is wrong (not an .npz, not an npdiff checkpoint, a newer format, a malformed meta, a model
configuration that does not fit the stored weights, …).
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import zipfile
from dataclasses import dataclass

import numpy as np

from npdiff import backend
from npdiff.io import fileio
from npdiff.nn.denoiser import Denoiser
from npdiff.processes.schedules import Schedule

FORMAT_VERSION = 1
IGNORED_CONFIG = ("seed", "dtype")  # the init seed is overwritten; weights convert to the model's dtype
MAX_T = 1_000_000  # a stored schedule longer than this is refused before its arrays are allocated
WARN_BYTES = 100 * 2**20  # the command line warns when a checkpoint will be larger than this
MAX_BYTES = 16 * 2**30  # a checkpoint whose arrays would expand beyond this is refused before any is read


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's meta")


def estimate_bytes(model, *, optimizer: bool = True, ema: bool = False, extra: int = 0) -> int:
    """The size a checkpoint of ``model`` will have: its weights, Adam's two moments, the EMA, + ``extra``."""
    weights = sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in model.parameters().values())
    return weights * (1 + 2 * bool(optimizer) + bool(ema)) + int(extra)


def save(path, model, *, optimizer=None, ema=None, step: int = 0, rng=None, schedule=None,
         meta: dict | None = None, groups: dict | None = None) -> None:
    """Write a checkpoint of ``model`` (and whatever else is given) atomically to ``path`` (the exact name)."""
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
        info["ema_updates"], info["ema_warmup"] = int(ema.updates), bool(ema.warmup)
    if rng is not None:
        state = backend.rng_state(rng)
        if "device_state" in state:  # CuPy's generator: its state bytes go in an array, the meta names them
            arrays["rng/device_state"] = state.pop("device_state")
            state["device_state"] = "rng/device_state"
        info["rng_state"] = state
    for group, values in (groups or {}).items():
        for key, value in values.items():
            arrays[f"{group}/{key}"] = np.asarray(value)
    arrays["meta"] = np.array(json.dumps(info, default=_json_default))
    with fileio.replacing(path) as f:
        np.savez(f, **arrays)


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``info`` (the decoded, validated meta) and ``arrays`` (every stored array by key)."""

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

    def _fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: {what}")

    def _flat(self, key: str, size: int, what: str):
        value = self.arrays.get(key)
        if value is None:
            raise self._fail(f"no {what} stored")
        if value.dtype.kind not in "fiu" or value.shape != (size,):
            raise self._fail(f"the stored {what} have shape {value.shape} and dtype {value.dtype}; "
                             f"the model needs ({size},) numbers")
        return value

    def restore(self, model, *, optimizer=None, ema=None, rng=None, use_ema: bool = False) -> None:
        """Copy the stored state into existing objects. ``use_ema`` loads the EMA weights into the model.

        Everything is checked before anything is copied, so a refused checkpoint leaves the objects as they were.
        """
        params = self.group("param")
        mine = model.parameters()
        if set(params) != set(mine):
            missing, extra = sorted(set(mine) - set(params)), sorted(set(params) - set(mine))
            raise self._fail(f"parameters do not match the model (missing {missing}, unexpected {extra})")
        config, stored = getattr(model, "config", None), self.info["model_config"]
        if config is not None and stored is not None:
            diff = {k: (stored.get(k), v) for k, v in config.items()
                    if k not in IGNORED_CONFIG and stored.get(k) != v}
            if diff:
                raise self._fail(f"model configuration differs (checkpoint, model): {diff}")
        for name, value in mine.items():
            array = np.asarray(params[name])
            if tuple(array.shape) != tuple(value.shape) or array.dtype.kind not in "fiu":
                raise self._fail(f"parameter {name} has shape {array.shape} and dtype {array.dtype}; "
                                 f"the model's has shape {value.shape}")
        size = int(model.flat_params.size)
        shadow = self._flat("ema/shadow", size, "EMA weights") if (use_ema or ema is not None) else None
        if optimizer is not None:
            if "optimizer" not in self.info:
                raise self._fail("no optimizer state stored")
            state = {"m": self._flat("optimizer/m", size, "Adam moments"),
                     "v": self._flat("optimizer/v", size, "Adam moments"), "steps": self.info["optimizer"]["steps"]}
        if rng is not None:
            if "rng_state" not in self.info:
                raise self._fail("no random-generator state stored")
            rng_state = dict(self.info["rng_state"])
            if "device_state" in rng_state:
                rng_state["device_state"] = self.arrays.get("rng/device_state", np.zeros(0, np.uint8))
            try:
                backend.set_rng_state(rng, rng_state, check_only=True)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise self._fail(f"the stored random-generator state does not fit a "
                                 f"{type(rng.bit_generator).__name__}: {exc}")
        for name, value in mine.items():
            value[...] = backend.asarray(params[name], dtype=value.dtype)
        if use_ema:
            model.flat_params[...] = backend.asarray(shadow, dtype=model.flat_params.dtype)
        if optimizer is not None:
            optimizer.load_state_dict(state)
        if ema is not None:
            ema.shadow[...] = backend.asarray(shadow, dtype=ema.shadow.dtype)
            # a checkpoint from before the warmup existed: its average is past any warmup
            ema.updates = int(self.info.get("ema_updates", 10**9))
        if rng is not None:
            backend.set_rng_state(rng, rng_state)


def _check_sizes(path: str) -> None:
    """Before anything is expanded: the archive's declared sizes fit MAX_BYTES, and no member's .npy header
    promises more than the member declares (zipfile never reads past a member's declared size)."""
    limit = MAX_BYTES
    if not zipfile.is_zipfile(path):
        return  # np.load says what the file is
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        total = sum(m.file_size for m in members)
        if total > limit:
            raise ValueError(f"its arrays declare {total} bytes, more than the {limit} npdiff reads from a checkpoint")
        for member in members:
            if not member.filename.endswith(".npy"):
                continue
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = reader(f, max_header_size=10_000)
                header = f.tell()
            promised = math.prod(shape) * dtype.itemsize
            if not dtype.hasobject and promised > member.file_size - header:
                raise ValueError(f"member {member.filename!r} promises {promised} bytes of {dtype} {shape} but holds "
                                 f"{member.file_size - header}")


def _read_arrays(path: str) -> dict:
    try:
        _check_sizes(path)
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise ValueError("it holds a single .npy array, not an .npz archive")
        with loaded as f:
            return {k: f[k] for k in f.files}
    except Exception as exc:  # an untrusted file: zipfile, zlib, format and allocation errors all mean "unreadable"
        raise ValueError(f"{path!r} is not a readable npdiff checkpoint (corrupt or not an .npz): "
                         f"{type(exc).__name__}: {exc}") from exc


def _check_info(path: str, info) -> dict:
    """The meta's fields have the types the rest of npdiff relies on."""
    def fail(what):
        return ValueError(f"{path!r}: malformed checkpoint meta: {what}")

    if not isinstance(info, dict):
        raise fail(f"a JSON {type(info).__name__}, not an object")
    step = info.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise fail(f"'step' must be an integer >= 0, got {_show(step)}")
    for key in ("model_config", "schedule_config"):
        if not isinstance(info.get(key), (dict, type(None))):
            raise fail(f"{key!r} must be an object or null, got {type(info.get(key)).__name__}")
    if not isinstance(info.setdefault("meta", {}), dict):
        raise fail(f"'meta' must be an object, got {type(info['meta']).__name__}")
    if "optimizer" in info:
        opt = info["optimizer"]
        if not isinstance(opt, dict) or isinstance(opt.get("steps"), bool) or not isinstance(opt.get("steps"), int) \
                or opt["steps"] < 0:
            raise fail("'optimizer' must be an object with an integer 'steps' >= 0")
    if "ema_decay" in info:
        decay = info["ema_decay"]
        if not _finite_number(decay) or not 0 <= decay < 1:
            raise fail(f"'ema_decay' must be a number in [0, 1), got {_show(decay)}")
    updates = info.get("ema_updates", 0)
    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
        raise fail(f"'ema_updates' must be an integer >= 0, got {_show(updates)}")
    if "rng_state" in info and not isinstance(info["rng_state"], dict):
        raise fail("'rng_state' must be an object")
    return info


def load(path) -> Checkpoint:
    """Read and validate a checkpoint (``allow_pickle=False``)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    arrays = _read_arrays(path)
    if "format_version" not in arrays or "meta" not in arrays:
        raise ValueError(f"{path!r} is an .npz file but not an npdiff checkpoint (no format_version/meta)")
    version, meta = arrays.pop("format_version"), arrays.pop("meta")
    if version.shape != () or version.dtype.kind not in "iu":
        raise ValueError(f"{path!r}: format_version is not an integer")
    if int(version) != FORMAT_VERSION:
        raise ValueError(f"{path!r} has checkpoint format {int(version)}; this npdiff reads format {FORMAT_VERSION}")
    if meta.shape != () or meta.dtype.kind != "U":
        raise ValueError(f"{path!r}: the checkpoint's meta is not a JSON string")
    try:
        info = json.loads(str(meta))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path!r}: the checkpoint's meta is not valid JSON: {exc}") from exc
    return Checkpoint(path, _check_info(path, info), arrays)


def _show(value) -> str:
    """A short repr for messages (a hand-edited meta may hold a 400-digit number or a long list)."""
    return reprlib.repr(value)


def _finite_number(value) -> bool:
    """True for an int or float (not a bool) that is finite as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


CONFIG_TYPES = {"coord_scale": float, "time_scale": float, "embed_coords": bool, "layernorm": bool,
                "final_layernorm": bool, "activation": str, "dtype": str}


def _min_parameters(config: dict) -> int:
    """A lower bound on the parameters a Denoiser of ``config`` holds (its weight matrices alone), after
    checking the type of every setting it knows (so that a hand-edited meta cannot reach the constructor)."""
    ints = {k: config.get(k) for k in ("data_dim", "out_dim", "hidden", "n_blocks", "emb_dim", "time_emb_dim")}
    for key, value in ints.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"model setting {key!r} must be an integer >= 0, got {_show(value)}")
    for key, kind in CONFIG_TYPES.items():
        value = config.get(key)
        wrong = not _finite_number(value) if kind is float else not isinstance(value, kind)
        if key in config and wrong:
            raise ValueError(f"model setting {key!r} must be a {'finite number' if kind is float else kind.__name__}, "
                             f"got {_show(value)}")
    if config.get("dtype", "float32") not in ("float32", "float64"):
        raise ValueError(f"model setting 'dtype' must be 'float32' or 'float64', got {_show(config.get('dtype'))}")
    d, h, e = ints["data_dim"] or 0, ints["hidden"] or 0, ints["emb_dim"] or 0
    out, te = ints["out_dim"] or d, ints["time_emb_dim"] or e
    features = d * e if config.get("embed_coords", True) else d
    return h * (features + te) + (ints["n_blocks"] or 0) * h * h + h * out


def _build(path: str, what: str, factory, config: dict):
    try:
        return factory(**config)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, ZeroDivisionError) as exc:
        raise ValueError(f"{path}: the stored {what} configuration cannot be built: "
                         f"{type(exc).__name__}: {exc}") from exc


def load_model(path, *, use_ema: bool = True):
    """Rebuild the denoiser and its schedule from a checkpoint -> (model, schedule or None).

    use_ema: load the EMA weights when the checkpoint has them (what one samples from).
    """
    return model_from(load(path), use_ema=use_ema)


def model_from(ckpt: Checkpoint, *, use_ema: bool = True):
    """``load_model`` for a checkpoint already loaded: (model, schedule or None), both checked before they are built."""
    config = ckpt.info["model_config"]
    if config is None:
        raise ValueError(f"{ckpt.path}: no model configuration stored; build the model and use restore()")
    stored = sum(int(v.size) for k, v in ckpt.arrays.items() if k.startswith("param/"))
    try:
        needed = _min_parameters(config)
    except ValueError as exc:
        raise ValueError(f"{ckpt.path}: {exc}") from None
    if needed > stored:
        raise ValueError(f"{ckpt.path}: the model configuration needs at least {_show(needed)} weights; "
                         f"the checkpoint stores {stored}")
    schedule_config = ckpt.info["schedule_config"]
    if schedule_config is not None:
        T = schedule_config.get("T")
        if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_T:
            raise ValueError(f"{ckpt.path}: the stored schedule has T = {_show(T)}; expected an integer in 1..{MAX_T}")
    model = _build(ckpt.path, "model", Denoiser, config)
    ckpt.restore(model, use_ema=use_ema and "ema/shadow" in ckpt.arrays)
    return model, (None if schedule_config is None else _build(ckpt.path, "schedule", Schedule, schedule_config))


def finite_weights(model) -> bool:
    """True when every weight is finite (a checkpoint of a diverged run is not)."""
    return bool(np.isfinite(backend.to_numpy(model.flat_params)).all())
