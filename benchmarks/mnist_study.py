"""Which pixel-space MLP learns Fashion-MNIST fastest per CPU minute: one named configuration per run (issue 9.3).

    python benchmarks/mnist_study.py CONFIG [--steps N] [--n 500] [--eval-at S1,S2,…]
    python benchmarks/mnist_study.py --list          # the configurations and what each changes
    python benchmarks/mnist_study.py --table         # the markdown table of every run so far

One run trains one configuration of ``CONFIGS`` (the baseline, today's ``demos/mnist.py`` model, with ONE
knob changed) on the 60,000 Fashion-MNIST training images (vectors of D = 784 pixels on [−1, 1]) for a
fixed number of steps with one BLAS thread, samples n images (DDIM, 50 steps, x̂_0 clipped, unless the
configuration says otherwise) and scores them with the classifier judge (``npdiff.images.quality``,
cached in out/image_quality; trained there on first use): FCD, the real-vs-real floor and the three
other baselines at the same n, the accuracy on the intended class (class-conditional runs), the
entropy of the predicted classes. A configuration with a ``parent`` trains nothing: it re-samples the
parent's checkpoint of the same step count (sampler variants).

Timings are CPU seconds of this process (``time.process_time``; one BLAS thread, so ≈ the wall time of an
idle core), training and sampling separately; the load average is recorded beside them.

Outputs under out/mnist_study/ (gitignored): results.jsonl (one JSON line per scored set of samples),
ckpt/NAME-STEPS.npz (the weights and their EMA), samples/NAME-STEPS[-w…].npy (float32 (n, 784) on [−1, 1])
and .png (a 10 × 10 grid; class-conditional: one row per class).
"""

from __future__ import annotations

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # before NumPy loads its BLAS: one thread (the machine is shared)

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from npdiff import backend
from npdiff.images import idx
from npdiff.io import threads
from npdiff.processes import ddpm, sampling
from npdiff.training import checkpoint, train  # noqa: E402
from npdiff.images.quality import ImageJudge  # noqa: E402
from npdiff.nn.denoiser import Denoiser  # noqa: E402
from npdiff.nn.optim import EMA, AdamW, cosine_lr  # noqa: E402
from npdiff.processes.schedules import Schedule  # noqa: E402

OUT = os.path.join("out", "mnist_study")
JUDGE_DIR = os.path.join("out", "image_quality")
N_CLASSES = 10

# today's demos/mnist.py model and training, with DDIM-50 sampling for scoring
BASE = dict(steps=1500, batch=128, lr=2e-3, warmup=100, clip=1.0, ema=0.999, T=1000, schedule="linear",
            hidden=1024, n_blocks=3, emb_dim=128, prediction="eps", min_snr_gamma=None, input_skip=False,
            num_classes=None, label_dropout=0.1, guidance=(0.0,), uncond=False,
            sampler="ddim", ddim_steps=50, variance="fixed_small", clip_x0=True, parent=None, weights="ema", seed=0)

# name: (what it changes, overrides of BASE). One knob per variation, against the row named in "vs".
CONFIGS = {
    "untrained": ("no training at all: what the sampler makes of the initial weights", dict(steps=0)),
    "baseline": ("the demo before this study: ε-prediction, linear T=1000, 1024×3, lr 2e-3, batch 128, EMA 0.999", {}),
    "x0": ("predict x_0", dict(prediction="x0")),
    "v": ("predict v (Salimans & Ho 2022)", dict(prediction="v")),
    "eps-minsnr5": ("ε with min-SNR-γ=5 weighting", dict(min_snr_gamma=5.0)),
    "x0-minsnr5": ("x_0 with min-SNR-γ=5", dict(prediction="x0", min_snr_gamma=5.0)),
    "v-minsnr5": ("v with min-SNR-γ=5", dict(prediction="v", min_snr_gamma=5.0)),
    "v-cosine": ("v, cosine schedule", dict(prediction="v", schedule="cosine")),
    "eps-cosine": ("ε, cosine schedule", dict(schedule="cosine")),
    "v-lr1e-3": ("v, lr 1e-3", dict(prediction="v", lr=1e-3)),
    "v-lr4e-3": ("v, lr 4e-3", dict(prediction="v", lr=4e-3)),
    "v-w512": ("v, width 512", dict(prediction="v", hidden=512)),
    "v-w2048": ("v, width 2048", dict(prediction="v", hidden=2048)),
    "v-d2": ("v, 2 blocks", dict(prediction="v", n_blocks=2)),
    "v-d5": ("v, 5 blocks", dict(prediction="v", n_blocks=5)),
    "v-b64": ("v, batch 64", dict(prediction="v", batch=64)),
    "v-b256": ("v, batch 256", dict(prediction="v", batch=256)),
    "v-ema0": ("v, no EMA", dict(prediction="v", ema=0.0)),
    "v-ema9995": ("v, EMA 0.9995", dict(prediction="v", ema=0.9995)),
    "v-skip": ("v, input skip (a Linear of x_t added to the output)", dict(prediction="v", input_skip=True)),
    # x_0-prediction won the first screen (live weights): one knob at a time around it
    "x0-cosine": ("x_0, cosine schedule", dict(prediction="x0", schedule="cosine")),
    "x0-lr1e-3": ("x_0, lr 1e-3", dict(prediction="x0", lr=1e-3)),
    "x0-lr4e-3": ("x_0, lr 4e-3", dict(prediction="x0", lr=4e-3)),
    "x0-w512": ("x_0, width 512", dict(prediction="x0", hidden=512)),
    "x0-w2048": ("x_0, width 2048", dict(prediction="x0", hidden=2048)),
    "x0-d2": ("x_0, 2 blocks", dict(prediction="x0", n_blocks=2)),
    "x0-d5": ("x_0, 5 blocks", dict(prediction="x0", n_blocks=5)),
    "x0-b64": ("x_0, batch 64", dict(prediction="x0", batch=64)),
    "x0-b256": ("x_0, batch 256", dict(prediction="x0", batch=256)),
    "x0-ema99": ("x_0, EMA 0.99", dict(prediction="x0", ema=0.99)),
    "x0-ema9995": ("x_0, EMA 0.9995", dict(prediction="x0", ema=0.9995)),
    "x0-skip": ("x_0, input skip", dict(prediction="x0", input_skip=True)),
    "x0@anc-small": ("x_0's checkpoint (live), ancestral T=1000, σ²=β̃",
                     dict(parent="x0", sampler="ancestral", variance="fixed_small", weights="live")),
    "x0@anc-large": ("x_0's checkpoint (live), ancestral T=1000, σ²=β",
                     dict(parent="x0", sampler="ancestral", variance="fixed_large", weights="live")),
    "x0@ddim100": ("x_0's checkpoint (live), DDIM 100 steps", dict(parent="x0", ddim_steps=100, weights="live")),
    "x0@ddim20": ("x_0's checkpoint (live), DDIM 20 steps", dict(parent="x0", ddim_steps=20, weights="live")),
    "x0@ddim10": ("x_0's checkpoint (live), DDIM 10 steps", dict(parent="x0", ddim_steps=10, weights="live")),
    "x0@noclip": ("x_0's checkpoint (live), DDIM 50 without x̂_0 clipping",
                  dict(parent="x0", clip_x0=False, weights="live")),
    "cond-x0": ("x_0 + labels (dropout 0.1), guidance w ∈ {0, 0.5, 1, 2, 3}, and the label dropped",
                dict(prediction="x0", num_classes=N_CLASSES, guidance=(0.0, 0.5, 1.0, 2.0, 3.0), uncond=True)),
    "cond-x0-skip": ("cond-x0 with the input skip", dict(prediction="x0", num_classes=N_CLASSES, input_skip=True,
                                                         guidance=(0.0, 0.5, 1.0, 2.0, 3.0), uncond=True)),
    "cond-x0-minsnr5": ("cond-x0 with min-SNR-γ=5", dict(prediction="x0", num_classes=N_CLASSES, min_snr_gamma=5.0,
                                                         guidance=(0.0, 0.5, 1.0, 2.0, 3.0), uncond=True)),
    "cond-x0-w2048": ("cond-x0 at width 2048", dict(prediction="x0", num_classes=N_CLASSES, hidden=2048,
                                                    guidance=(0.0, 0.5, 1.0, 2.0, 3.0), uncond=True)),
    "cond-x0-drop2": ("cond-x0 with label dropout 0.2", dict(prediction="x0", num_classes=N_CLASSES,
                                                             label_dropout=0.2, guidance=(0.0, 0.5, 1.0, 2.0, 3.0),
                                                             uncond=True)),
    "cond-x0-drop3": ("cond-x0 with label dropout 0.3", dict(prediction="x0", num_classes=N_CLASSES,
                                                             label_dropout=0.3, guidance=(0.0, 0.5, 1.0),
                                                             uncond=True)),
    "cond-x0-drop2-w512": ("cond-x0-drop2 at width 512 (≈ ⅓ of the CPU per step: run it for more steps)",
                           dict(prediction="x0", num_classes=N_CLASSES, label_dropout=0.2, hidden=512,
                                guidance=(0.0, 0.5, 1.0), uncond=True)),
    "cond-x0-long": ("cond-x0, w ∈ {0, 0.5} and the label dropped, for a long run scored along the way "
                     "(--steps 4000 --eval-at 1000,2000,3000)",
                     dict(prediction="x0", num_classes=N_CLASSES, guidance=(0.0, 0.5), uncond=True)),
    "cond-x0-drop2-long": ("cond-x0-drop2, w ∈ {0, 0.5} and the label dropped, for a long run",
                           dict(prediction="x0", num_classes=N_CLASSES, label_dropout=0.2, guidance=(0.0, 0.5),
                                uncond=True)),
    "cond-x0@ddim20": ("cond-x0's checkpoint (live), DDIM 20 steps",
                       dict(parent="cond-x0", ddim_steps=20, weights="live", guidance=(0.0, 0.5, 1.0, 2.0),
                            uncond=True)),
    "cond-x0@anc-small": ("cond-x0's checkpoint (live), ancestral σ²=β̃",
                          dict(parent="cond-x0", sampler="ancestral", weights="live", guidance=(1.0,), uncond=False)),
    # sampler variants: re-sample a parent's checkpoint (train the parent first, same --steps)
    "v@anc-small": ("v's checkpoint, ancestral T=1000, σ²=β̃", dict(parent="v", sampler="ancestral",
                                                                    variance="fixed_small")),
    "v@anc-large": ("v's checkpoint, ancestral T=1000, σ²=β", dict(parent="v", sampler="ancestral",
                                                                   variance="fixed_large")),
    "v@ddim100": ("v's checkpoint, DDIM 100 steps", dict(parent="v", ddim_steps=100)),
    "v@ddim20": ("v's checkpoint, DDIM 20 steps", dict(parent="v", ddim_steps=20)),
    "v@noclip": ("v's checkpoint, DDIM 50 without x̂_0 clipping", dict(parent="v", clip_x0=False)),
    "baseline@noclip": ("baseline's checkpoint, DDIM 50 without clipping", dict(parent="baseline", clip_x0=False)),
    "baseline@anc-small": ("baseline's checkpoint, ancestral σ²=β̃ (today's demo sampler)",
                           dict(parent="baseline", sampler="ancestral")),
    # class-conditional (classifier-free guidance): labels k = 0..9 equally, w swept, label dropped too
    "cond-v": ("v + labels (dropout 0.1), guidance w ∈ {0, 1, 2, 3}, and the label dropped",
               dict(prediction="v", num_classes=N_CLASSES, guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-eps": ("ε + labels, w ∈ {0, 1, 2, 3}, and the label dropped",
                 dict(num_classes=N_CLASSES, guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-v-skip": ("cond-v with the input skip", dict(prediction="v", num_classes=N_CLASSES, input_skip=True,
                                                        guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-v-minsnr5": ("cond-v with min-SNR-γ=5", dict(prediction="v", num_classes=N_CLASSES, min_snr_gamma=5.0,
                                                       guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-v-w2048": ("cond-v at width 2048", dict(prediction="v", num_classes=N_CLASSES, hidden=2048,
                                                  guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-v-d2": ("cond-v with 2 blocks", dict(prediction="v", num_classes=N_CLASSES, n_blocks=2,
                                               guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-v-b64": ("cond-v at batch 64", dict(prediction="v", num_classes=N_CLASSES, batch=64,
                                              guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-v-b256": ("cond-v at batch 256", dict(prediction="v", num_classes=N_CLASSES, batch=256,
                                                guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-v-lr4e-3": ("cond-v at lr 4e-3", dict(prediction="v", num_classes=N_CLASSES, lr=4e-3,
                                                guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-v-ema9995": ("cond-v with EMA 0.9995", dict(prediction="v", num_classes=N_CLASSES, ema=0.9995,
                                                      guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-v-ema0": ("cond-v without EMA", dict(prediction="v", num_classes=N_CLASSES, ema=0.0,
                                               guidance=(0.0, 1.0, 2.0, 3.0), uncond=True)),
    "cond-v@ddim20": ("cond-v's checkpoint, DDIM 20 steps", dict(parent="cond-v", prediction="v",
                                                                  num_classes=N_CLASSES, ddim_steps=20,
                                                                  guidance=(1.0, 2.0, 3.0), uncond=True)),
    "cond-v@ddim100": ("cond-v's checkpoint, DDIM 100 steps", dict(parent="cond-v", prediction="v",
                                                                    num_classes=N_CLASSES, ddim_steps=100,
                                                                    guidance=(1.0, 2.0, 3.0), uncond=True)),
    "cond-v@anc-small": ("cond-v's checkpoint, ancestral σ²=β̃", dict(parent="cond-v", prediction="v",
                                                                      num_classes=N_CLASSES, sampler="ancestral",
                                                                      guidance=(2.0,), uncond=False)),
}


def settings_of(name: str, steps: int | None) -> dict:
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; --list shows them")
    s = {**BASE, **CONFIGS[name][1]}
    if steps is not None:
        s["steps"] = int(steps)
    if s["parent"] is not None:  # a sampler variant: the architecture and training are the parent's
        parent = {**BASE, **CONFIGS[s["parent"]][1]}
        keep = ("sampler", "ddim_steps", "variance", "clip_x0", "guidance", "uncond", "parent", "weights")
        s = {**parent, **{k: s[k] for k in keep}, "steps": s["steps"]}
    return s


def label_api() -> bool:
    """Has the library got class labels yet (``Denoiser(num_classes=…)``, the lead's API of issue 9.2)?"""
    return "num_classes" in inspect.signature(Denoiser.__init__).parameters


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def ckpt_path(name: str, steps: int) -> str:
    return os.path.join(OUT, "ckpt", f"{name}-{steps}.npz")


def build(s: dict):
    """(model, schedule, objective) of settings s."""
    schedule = Schedule(s["T"], s["schedule"])
    extra = {}
    if s["num_classes"] is not None or s["input_skip"]:
        if not label_api():
            raise SystemExit("this configuration needs Denoiser(num_classes=…, input_skip=…), which is not in the "
                             "library yet")
        extra = dict(num_classes=s["num_classes"], input_skip=s["input_skip"])
    model = Denoiser(784, hidden=s["hidden"], n_blocks=s["n_blocks"], emb_dim=s["emb_dim"], embed_coords=False,
                     layernorm=True, final_layernorm=True, seed=s["seed"], **extra)
    objective_kw = {"label_dropout": s["label_dropout"]} if s["num_classes"] is not None else {}
    objective = ddpm.EpsilonObjective(schedule, s["prediction"], s["min_snr_gamma"], **objective_kw)
    return model, schedule, objective


def chain_of(model, schedule, s: dict, labels=None, guidance: float = 0.0):
    kw = {}
    if s["num_classes"] is not None:
        kw = dict(labels=labels, guidance=guidance)
    return ddpm.EpsilonChain(model, schedule, s["variance"], clip_x0=(-1.0, 1.0) if s["clip_x0"] else None,
                             max_gain=None if not s["clip_x0"] else 10.0, prediction=s["prediction"], **kw)


def draw(model, schedule, s: dict, n: int, labels, guidance: float):
    """n samples (n, 784) float32 and the CPU seconds they took; one fixed seed, so every run starts from
    the same x_T."""
    rng = backend.default_rng(12345)
    kw = dict(sampler=s["sampler"], ddim_steps=s["ddim_steps"] if s["sampler"] == "ddim" else None)
    c0 = time.process_time()
    x = sampling.sample(chain_of(model, schedule, s, labels, guidance), n, rng, **kw)
    return backend.to_numpy(x).astype(np.float32), time.process_time() - c0


def grid_png(path: str, samples: np.ndarray, labels=None, grid: int = 10) -> None:
    """A grid × grid mosaic (grey on black); with labels, row k holds the first images of class k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if labels is not None:
        order = np.concatenate([np.flatnonzero(labels == k)[:grid] for k in range(N_CLASSES)])
        samples = samples[order]
    images = idx.vectors_to_images(samples[: grid * grid], (28, 28))
    mosaic = np.zeros((grid * 29 + 1, grid * 29 + 1), dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, grid)
        mosaic[1 + r * 29: 1 + r * 29 + 28, 1 + c * 29: 1 + c * 29 + 28] = image
    plt.imsave(path, mosaic, cmap="gray", vmin=0, vmax=255)


def train_model(name: str, s: dict, x, y, eval_at: list[int], on_eval) -> dict:
    """Train (in segments ending at each eval_at step, resuming the checkpoint exactly) and call
    on_eval(model, schedule, step, train_cpu_s, train_wall_s, history, weights) with the live weights in the
    model, then (with an EMA) with the averaged ones."""
    model, schedule, objective = build(s)
    optimizer = AdamW(model, lr=s["lr"])
    ema = EMA(model, s["ema"]) if s["ema"] > 0 else None
    rng = backend.default_rng(s["seed"])
    path = ckpt_path(name, s["steps"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.remove(path)  # a stale checkpoint of an earlier run must not be resumed
    stops = sorted({k for k in eval_at if 0 < k < s["steps"]} | {s["steps"]})
    lr_schedule = cosine_lr(s["lr"], s["steps"], warmup=min(s["warmup"], s["steps"])) if s["steps"] else None
    fit_kw = {"labels": y} if s["num_classes"] is not None else {}
    cpu, wall, history = 0.0, 0.0, None
    for stop in stops:
        c0, w0 = time.process_time(), time.perf_counter()
        if stop > 0:
            history = train.fit(model, x, objective, steps=stop, batch_size=s["batch"], optimizer=optimizer,
                                rng=rng, lr_schedule=lr_schedule, clip=s["clip"], ema=ema, checkpoint_path=path,
                                checkpoint_every=0, resume=True, progress=False,
                                meta={"study": name, "settings": s}, **fit_kw)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        on_eval(model, schedule, stop, cpu, wall, history, "live", ema)  # the weights as trained
        if ema is not None:  # and their EMA (EMA starts at the initial weights: decay^steps of them remain)
            ema.swap()
            try:
                on_eval(model, schedule, stop, cpu, wall, history, "ema", ema)
            finally:
                ema.swap()
    # the slim checkpoint sampler variants load: weights, EMA, schedule, settings (no optimizer state)
    checkpoint.save(path, model, ema=ema, step=s["steps"], schedule=schedule, meta={"study": name, "settings": s})
    return {"train_cpu_s": cpu, "train_wall_s": wall}


def load_parent(s: dict, parent: str):
    path = ckpt_path(parent, s["steps"])
    if not os.path.exists(path):
        raise SystemExit(f"{path} does not exist: run `python benchmarks/mnist_study.py {parent} --steps "
                         f"{s['steps']}` first")
    model, schedule = checkpoint.load_model(path, use_ema=s["weights"] == "ema")
    info = checkpoint.load(path).info
    return model, schedule, info


def score_all(name, s, model, schedule, judge, n, step, train_cpu, train_wall, history, weights,
              extra) -> list[dict]:
    """Sample and score every sampling setting of the configuration; append one JSON line each."""
    rows = []
    settings = []
    if s["num_classes"] is None:
        settings.append((None, 0.0))
    else:
        balanced = np.repeat(np.arange(N_CLASSES), -(-n // N_CLASSES))[:n]  # k = 0..9 equally
        settings += [(balanced, float(w)) for w in s["guidance"]]
        if s["uncond"]:
            settings.append(("dropped", 0.0))
    loss = None if not history or not history.loss else float(np.mean(history.loss[-100:]))
    curve = None if not history or not history.loss else [round(float(v), 5) for v in history.smoothed(100)[99::250]]
    for labels, w in settings:
        given = None if isinstance(labels, str) else labels
        samples, sample_cpu = draw(model, schedule, s, n, given, w)
        tag = (f"{name}-{step}" + ("" if weights == "ema" else f"-{weights}")
               + ("" if s["num_classes"] is None else ("-uncond" if given is None else f"-w{w:g}")))
        os.makedirs(os.path.join(OUT, "samples"), exist_ok=True)
        npy = os.path.join(OUT, "samples", tag + ".npy")
        np.save(npy, samples)
        grid_png(os.path.join(OUT, "samples", tag + ".png"), samples, given)
        c0 = time.process_time()
        row = judge.evaluate(samples, given, tag)
        base = judge.baselines(n, 0, given)
        score_cpu = time.process_time() - c0
        record = {
            "config": name, "what": CONFIGS[name][0], "step": step, "steps": s["steps"], "n": n,
            "labels": None if s["num_classes"] is None else ("dropped" if given is None else "balanced"),
            "guidance": w if given is not None and s["num_classes"] is not None else None,
            "sampler": s["sampler"] + (f"{s['ddim_steps']}" if s["sampler"] == "ddim" else f"-{s['variance']}"),
            "clip_x0": s["clip_x0"], "weights": weights, "train_cpu_s": round(train_cpu, 2), "train_wall_s": round(train_wall, 2),
            "sample_cpu_s": round(sample_cpu, 2), "score_cpu_s": round(score_cpu, 2), "final_loss": loss,
            "loss_curve_every_250": curve, "fcd": row["fcd"], "accuracy": row["accuracy"], "entropy": row["entropy"],
            "floor": base[0]["fcd"], "floor_accuracy": base[0]["accuracy"], "gauss": base[1]["fcd"],
            "class_gauss": base[2]["fcd"], "class_gauss_accuracy": base[2]["accuracy"], "noise": base[3]["fcd"],
            "load": load_avg(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "samples": npy,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}, **extra,
        }
        with open(os.path.join(OUT, "results.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        acc = "—" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f} %"
        print(f"{tag:<28} FCD {row['fcd']:8.2f} (floor {base[0]['fcd']:.2f}, Gaussian {base[1]['fcd']:.2f}, "
              f"per class {base[2]['fcd']:.2f})  accuracy {acc}  entropy {row['entropy']:.3f}  "
              f"train {train_cpu / 60:.2f} CPU-min  sample {sample_cpu:.1f} CPU-s  load {load_avg()}", flush=True)
        rows.append(record)
    return rows


def run(name: str, steps: int | None, n: int, eval_at: list[int], rescore: bool = False,
        weights: str | None = None) -> None:
    s = settings_of(name, steps)
    if weights is not None:
        s["weights"] = weights
    print(threads.apply_policy())
    print(f"{name}: {CONFIGS[name][0]}; load {load_avg()} on {os.cpu_count()} cores; settings {s}", flush=True)
    judge = ImageJudge.from_folder(JUDGE_DIR, idx.FASHION_MNIST_DIR, verbose=True)
    if s["parent"] is not None or rescore:
        parent = name if rescore else s["parent"]
        model, schedule, info = load_parent(s, parent)
        stored = (info.get("meta") or {}).get("settings", {})
        warmup = {"ema_warmup": info.get("ema_warmup", False)} if "ema_decay" in info else {}
        trained = [r for r in read_results() if r["config"] == parent and r["steps"] == s["steps"]
                   and r["step"] == s["steps"]]
        train_cpu = trained[0]["train_cpu_s"] if trained else float("nan")
        train_wall = trained[0]["train_wall_s"] if trained else float("nan")
        loss = trained[0]["final_loss"] if trained else None
        history = train.History(loss=[loss]) if loss is not None else None
        score_all(name, s, model, schedule, judge, n, s["steps"], train_cpu, train_wall, history, s["weights"],
                  {"reused": ckpt_path(parent, s["steps"]), "parent_settings": stored, **warmup})
        return
    images, labels = idx.load_mnist(idx.FASHION_MNIST_DIR, "train")
    x = idx.images_to_vectors(images)  # (60000, 784) float32 on [−1, 1]
    y = labels.astype(np.int64)

    def on_eval(model, schedule, step, cpu, wall, history, weights, ema):
        extra = {} if ema is None else {"ema_warmup": getattr(ema, "warmup", False)}
        score_all(name, s, model, schedule, judge, n, step, cpu, wall, history, weights, extra)

    totals = train_model(name, s, x, y, eval_at, on_eval)
    print(f"{name}: trained {s['steps']} steps in {totals['train_cpu_s'] / 60:.2f} CPU-min "
          f"({totals['train_wall_s'] / 60:.2f} min wall); load {load_avg()}", flush=True)


def read_results() -> list[dict]:
    path = os.path.join(OUT, "results.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def table(rows: list[dict]) -> str:
    """The markdown table: one row per scored sample set, figures per CPU minute against the untrained model
    (FCD drop per CPU-minute of training and sampling) and the baseline run's FCD."""
    untrained = next((r["fcd"] for r in rows if r["config"] == "untrained"), None)
    lines = ["| config | step | weights | labels, w | sampler | train CPU-min | sample CPU-s | final loss | FCD | floor | "
             "per-class Gauss | accuracy | entropy | FCD drop / CPU-min | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        minutes = (r["train_cpu_s"] + r["sample_cpu_s"]) / 60 if r["train_cpu_s"] == r["train_cpu_s"] else None
        drop = "—" if untrained is None or not minutes or r["config"] == "untrained" else \
            f"{(untrained - r['fcd']) / minutes:.1f}"
        lab = "—" if r["labels"] is None else ("dropped" if r["labels"] == "dropped" else f"w={r['guidance']:g}")
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f} %"
        loss = "—" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        train_min = "—" if r["train_cpu_s"] != r["train_cpu_s"] else f"{r['train_cpu_s'] / 60:.2f}"
        weights = r.get("weights", "ema")
        if weights == "ema" and r.get("ema_warmup") is False:
            weights = "ema, no warmup"
        lines.append(f"| {r['config']} | {r['step']} | {weights} | {lab} | {r['sampler']}{'' if r['clip_x0'] else ' no clip'} | "
                     f"{train_min} | {r['sample_cpu_s']:.1f} | {loss} | {r['fcd']:.2f} | {r['floor']:.2f} | "
                     f"{r['class_gauss']:.2f} | {acc} | {r['entropy']:.3f} | {drop} | {r['load'][0]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="a configuration name (--list)")
    p.add_argument("--steps", type=int, help=f"training steps (default {BASE['steps']})")
    p.add_argument("--n", type=int, default=500, help="images sampled and scored (default 500)")
    p.add_argument("--eval-at", default="", help="also score at these training steps (comma-separated)")
    p.add_argument("--rescore", action="store_true",
                   help="score CONFIG's stored checkpoint again (with --weights) instead of training")
    p.add_argument("--weights", choices=("ema", "live"), help="sample from the EMA or the live weights of a "
                   "stored checkpoint (--rescore, sampler variants; default ema)")
    p.add_argument("--out", default=OUT, help=f"output folder (default {OUT})")
    p.add_argument("--list", action="store_true", help="print the configurations")
    p.add_argument("--table", action="store_true", help="print the markdown table of out/mnist_study/results.jsonl")
    args = p.parse_args(argv)
    OUT = args.out
    if args.list:
        for name, (what, _) in CONFIGS.items():
            print(f"{name:<20} {what}")
        print(f"(class labels in the library: {'yes' if label_api() else 'not yet'})")
        return
    if args.table:
        print(table(read_results()))
        return
    if args.config is None:
        p.error("give a configuration name, --list or --table")
    if args.steps is not None and args.steps < 0:
        p.error(f"--steps must be >= 0, got {args.steps}")
    eval_at = [int(v) for v in args.eval_at.split(",") if v.strip()]
    try:
        run(args.config, args.steps, args.n, eval_at, args.rescore, args.weights)
    except ValueError as err:
        sys.exit(f"mnist_study: error: {err}")


if __name__ == "__main__":
    main()
