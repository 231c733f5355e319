"""The GPU check: training, embed, predict and serve on a CUDA device, timed.

Run by ``bench/gpu_check.sh run`` on a machine with a GPU, after ``bench/gpu_check.sh prepare`` here
(which puts the inputs in ``.gpu/``). The model has the real shape (multilingual-e5-small's config
cut to 3 layers, the default model's tokenizer) and random weights: speed does not depend on the
weights' values, and the real weights are too large to carry to a lent GPU machine. So its
accuracy figures mean nothing; its speeds and its CPU/GPU agreement do.

Writes ``$OUT/gpu.json`` and one log per step; a step that fails records its error and the next
one still runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
GPU = Path(os.environ.get("GPU_CHECK_DIR", ".gpu")).resolve()  # what `prepare` wrote
WORK = Path("/tmp/gpuwork")
WORK.mkdir(exist_ok=True)
CLI = [sys.executable, "-m", "server.cli"]
DEV = os.environ.get("DEV", "cuda")  # "cpu" for a dry run here
SMALL = int(os.environ.get("SMALL", "0"))  # rows per file for a dry run; 0 = all
#: Steps to run, comma-separated (default: all). ``base`` and ``train_default_loop`` make the model
#: every later step uses. Second check (2026-12-04): without ``train_full_loop``.
ALL_STEPS = "base,train_default_loop,embed,agreement,predict,serve,train_full_loop"
STEPS = set(os.environ.get("STEPS", ALL_STEPS).split(","))
RESULTS: dict = {"steps": sorted(STEPS)}


def save() -> None:
    (OUT / "gpu.json").write_text(json.dumps(RESULTS, indent=1))


def run(name: str, argv: list[str], timeout: float, **kw) -> float | None:
    """Run a CLI step; log to $OUT/<name>.log; record wall time and rc."""
    t0 = time.perf_counter()
    with open(OUT / f"{name}.log", "w") as log:
        try:
            rc = subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, **kw
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = round(time.perf_counter() - t0, 2)
    RESULTS[name] = {"rc": rc, "wall_s": wall}
    print(f"[{name}] rc={rc} wall={wall}s", flush=True)
    save()
    return wall if rc == 0 else None


def step(name):
    def deco(fn):
        if name not in STEPS:
            return fn
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # record and go on
            RESULTS.setdefault(name, {})["error"] = repr(exc)[:2000]
            print(f"[{name}] ERROR {exc!r}", flush=True)
        RESULTS.setdefault(name, {})["step_s"] = round(time.perf_counter() - t0, 2)
        save()
        return fn

    return deco


def rows(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


import torch  # noqa: E402

RESULTS["env"] = {
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    "python": sys.version.split()[0],
}
save()

TRAIN = WORK / "train.jsonl"
VAL = WORK / "val.jsonl"
TEST = WORK / "test.jsonl"
BASE = WORK / "base"


@step("base")
def _base() -> None:
    from transformers import BertConfig, BertModel

    BASE.mkdir(exist_ok=True)
    import gzip

    (BASE / "tokenizer.json").write_bytes(
        gzip.decompress((GPU / "tok" / "tokenizer.json.gz").read_bytes())
    )
    shutil.copy(GPU / "tok" / "tokenizer_config.json", BASE / "tokenizer_config.json")
    cfg = json.loads((GPU / "tok" / "config.json").read_text())
    cfg["num_hidden_layers"] = 12  # multilingual-e5-small; the recipe cuts it to 3
    config = BertConfig(
        **{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")}
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(BASE)
    RESULTS["base"] = {"vocab": config.vocab_size, "files": sorted(p.name for p in BASE.iterdir())}


COMMON = (
    f"--base {BASE} --no-location-tokens --no-trim-vocab --layers 3 --link-hosts-only "
    "--place-snippets 0 --never-assign OTHER --heads geolocation,category"
).split()


def train(name: str, out: Path, flags: str, keep: tuple[str, ...]) -> None:
    """``profile-embed train`` on the device; keep ``keep`` entries of its ``training.json``."""
    run(
        name,
        [*CLI, "train", "--train", str(TRAIN), "--val", str(VAL), "--test", str(TEST), "-o",
         str(out), *COMMON, "--device", DEV, *flags.split()],
        timeout=420,
    )  # fmt: skip
    try:
        t = json.loads((out / "training.json").read_text())
        RESULTS[f"{name}_json"] = {k: t.get(k) for k in keep}
    except OSError as exc:
        RESULTS[f"{name}_json"] = {"error": repr(exc)}
    save()


# The default recipe's loop (80 tokens, batch 32, frozen word embeddings, 8,000 rows, 1 epoch).
if "train_default_loop" in STEPS:
    train(
        "train_default_loop",
        WORK / "mA",
        "--max-tokens 80 --max-train 8000 --freeze-embeddings --epochs 1 --batch-size 32 --lr 2e-4",
        ("throughput", "metrics"),
    )

MODEL = WORK / "mA"
n_train = rows(TRAIN)
RESULTS["n_embed_rows"] = n_train


def embed(name: str, src: Path, out: Path, device: str, numerics: str, *extra: str) -> float | None:
    """``profile-embed embed`` (no cache, no bar) of ``src`` into ``out``; its wall time."""
    return run(
        name,
        [*CLI, "embed", str(src), "-o", str(out), "--model", str(MODEL), "--no-cache",
         "--no-progress", "--device", device, "--numerics", numerics, *extra],
        timeout=300,
    )  # fmt: skip


#: numerics:batch-size pairs of the 24,000-row embed runs.
EMBED_RUNS = os.environ.get("EMBED_RUNS", "fp32:64,fp32:512,bf16:64,bf16:512,auto:256")
if "embed" in STEPS:
    for numerics, bs in (pair.split(":") for pair in EMBED_RUNS.split(",")):
        name = f"embed_{numerics}_bs{bs}"
        wall = embed(
            name, TRAIN, WORK / f"e_{numerics}_{bs}.npy", DEV, numerics, "--batch-size", bs
        )
        if wall:
            RESULTS[name]["rows_per_s_incl_start"] = round(n_train / wall, 1)
    # Each embed run above includes start-up (imports, loading the model): a 200-row run gives it.
    head = WORK / "head200.jsonl"
    head.write_text("".join(open(TRAIN).readlines()[:200]))
    for numerics in ("fp32", "bf16"):
        embed(f"embed_{numerics}_200rows", head, WORK / f"s_{numerics}.npy", DEV, numerics)
    embed("embed_cpu_fp32_200rows", head, WORK / "s_cpu.npy", "cpu", "fp32")


@step("agreement")
def _agree() -> None:
    import numpy as np

    cpu = np.load(WORK / "s_cpu.npy")
    out = {}
    for numerics in ("fp32", "bf16"):
        g = np.load(WORK / f"s_{numerics}.npy")
        cos = (cpu * g).sum(1) / (np.linalg.norm(cpu, axis=1) * np.linalg.norm(g, axis=1))
        out[numerics] = {
            "min_cos_vs_cpu_fp32": float(cos.min()),
            "mean_cos": float(cos.mean()),
            "max_abs": float(np.abs(cpu - g).max()),
        }
    RESULTS["agreement"] = out


def argmax_agreement(a_path: Path, b_path: Path) -> dict:
    """How many rows two prediction files give the same geolocation argmax."""
    a = [json.loads(line) for line in open(a_path)]
    b = [json.loads(line) for line in open(b_path)]
    same = sum(
        x["geolocation"]["argmax"] == y["geolocation"]["argmax"] for x, y in zip(a, b, strict=False)
    )
    return {"n_a": len(a), "n_b": len(b), "argmax_same": same}


if "predict" in STEPS:
    # --device auto takes the GPU; the same command on the CPU gives the labels to agree with.
    for name, device in (("predict_auto", "auto"), ("predict_cpu", "cpu")):
        wall = run(
            name,
            [*CLI, "predict", str(VAL), "-o", str(WORK / f"{name}.jsonl"), "--model", str(MODEL),
             "--device", device],
            timeout=300,
        )  # fmt: skip
        if wall:
            RESULTS[name]["rows_per_s_incl_start"] = round(rows(VAL) / wall, 1)
    try:
        RESULTS["predict_agreement"] = argmax_agreement(
            WORK / "predict_auto.jsonl", WORK / "predict_cpu.jsonl"
        )
    except (OSError, KeyError, ValueError) as exc:
        RESULTS["predict_agreement"] = {"error": repr(exc)}
    save()
RESULTS["n_val_rows"] = rows(VAL)


@step("serve")
def _serve() -> None:
    port = "50577"
    log = open(OUT / "serve.log", "w")
    env = dict(os.environ)
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--model",
            str(MODEL),
            "--port",
            port,
            "--device",
            DEV,
            "--cache",
            str(WORK / "cache.sqlite"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    t0 = time.perf_counter()
    ok = False
    while time.perf_counter() - t0 < 120:
        r = subprocess.run(
            [*CLI, "client", "info", "--target", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
        )
        if r.returncode == 0:
            ok = True
            RESULTS["serve"] = {
                "ready_s": round(time.perf_counter() - t0, 2),
                "info": r.stdout[:3000],
            }
            break
        time.sleep(1)
    if ok:
        t1 = time.perf_counter()
        with open(WORK / "served.jsonl", "w") as f:
            r = subprocess.run(
                [
                    *CLI,
                    "client",
                    "predict",
                    str(VAL),
                    "--target",
                    f"127.0.0.1:{port}",
                    "--batch-size",
                    "256",
                    "--timeout",
                    "120",
                ],
                stdout=f,
                stderr=subprocess.PIPE,
                text=True,
                timeout=300,
            )
        wall = time.perf_counter() - t1
        RESULTS["serve"].update(
            {
                "client_rc": r.returncode,
                "client_err": r.stderr[-1500:],
                "client_wall_s": round(wall, 2),
                "rows_per_s": round(rows(VAL) / wall, 1),
            }
        )
        # The served labels vs the CLI's on the same GPU model.
        RESULTS["serve"].update(
            argmax_agreement(WORK / "predict_auto.jsonl", WORK / "served.jsonl")
        )
    proc.send_signal(signal.SIGTERM)
    try:
        RESULTS.setdefault("serve", {})["exit"] = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        RESULTS["serve"]["exit"] = "killed"


# The full recipe's loop (192 tokens, batch 64, embeddings trained), 1 epoch over every row here.
if "train_full_loop" in STEPS:
    train(
        "train_full_loop",
        WORK / "mB",
        "--max-tokens 192 --epochs 1 --batch-size 64 --lr 5e-5",
        ("throughput",),
    )

RESULTS["done"] = True
save()
print(json.dumps(RESULTS, indent=1)[:6000])
