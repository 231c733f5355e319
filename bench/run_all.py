"""The benchmark suite behind ``make bench``: one run, every figure a ratio of same-run numbers.

Sections (each saved to the JSON as soon as it finishes):

1. ``machine``: CPU model, cores, load, versions.
2. ``peak``: best fp32 and int8 matmul FLOP/s now (``bench/flops.py``).
3. ``encoder``: throughput, FLOP/s utilisation and geolocation accuracy cost per numerics vs
   plain ``SentenceTransformer.encode`` on the same model folder (``bench/encoder_bench.py``);
   the fastest numerics within ``--max-points`` accuracy points of fp32 is "chosen". Peer
   engines (``--peers``, ``bench/peers.py``: sentence-transformers bf16, ONNX Runtime, OpenVINO,
   CTranslate2, ...) run in the same round-robin on the same texts; a peer that cannot run here
   gets a line saying why.
4. ``scaling``: forward throughput vs batch size, text length and threads (fp32, the chosen
   numerics, the server's choice here, and our numerics on the fastest peer's engine).
5. ``faiss``: build, queries/s, IVF recall@10 vs exact at 100k and 1M (``bench/index_bench.py``).
6. ``grpc``: ``bench/grpc_throughput.py`` at a small size (subprocess).

Results: ``bench/results/bench.json``; a table replaces the marked section of
``docs/BENCHMARKS.md``. ``--quick`` runs everything at toy sizes (seconds to a minute).

    .venv/bin/python bench/run_all.py --model models/default
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import encoder_bench, index_bench  # noqa: E402
from bench.flops import matmul_peak  # noqa: E402
from bench.peers import PEERS, prepare_peers  # noqa: E402
from bench.render import render, render_peers  # noqa: E402
from bench.report import (  # noqa: E402
    PEERS_END,
    PEERS_START,
    machine_info,
    write_json,
    write_section,
)

logger = logging.getLogger("bench.run_all")
SECTIONS = ("peak", "encoder", "scaling", "faiss", "grpc")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from embedder.numerics import NUMERICS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models/default", help="model folder")
    p.add_argument("--n", type=int, default=1000, help="simulated profiles for the encoder runs")
    p.add_argument("--numerics", nargs="+", default=list(NUMERICS), choices=NUMERICS)
    p.add_argument(
        "--peers",
        nargs="+",
        default=["all"],
        metavar="PEER",
        help="peer engines in the encoder run: all (default), none, or names from "
        "bench/peers.py PEERS",
    )
    p.add_argument("--head", default="geolocation", help="head whose accuracy is compared")
    p.add_argument("--max-points", type=float, default=0.5, help="accuracy budget vs fp32")
    p.add_argument("--budget-s", type=float, default=60.0, help="encoding seconds per variant")
    p.add_argument("--chunks", type=int, default=4, help="round-robin chunks per variant")
    p.add_argument("--scaling-count", type=int, default=64, help="sequences per scaling point")
    p.add_argument("--faiss-sizes", default="100000,1000000")
    p.add_argument("--faiss-wrapper-sizes", default="100000", help="sizes also run via the index")
    p.add_argument("--faiss-queries", type=int, default=500)
    p.add_argument("--grpc-n", type=int, default=200, help="profiles for the gRPC run (0: skip)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/bench.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs/BENCHMARKS.md")
    p.add_argument("--no-doc", action="store_true", help="do not touch the markdown document")
    p.add_argument(
        "--doc-block",
        choices=("all", "peers"),
        default="all",
        help="all: the generated section (make bench); peers: only the peer-engine block "
        "(for a run of --sections peak encoder, leaving the make bench tables as they are)",
    )
    p.add_argument("--quick", action="store_true", help="toy sizes: proves the suite runs")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.scaling_count, args.budget_s = min(args.n, 64), 16, 10.0
        args.faiss_sizes, args.faiss_wrapper_sizes, args.faiss_queries = "2000,8000", "2000", 50
        args.grpc_n = min(args.grpc_n, 16)
    args.faiss_sizes = [int(x) for x in str(args.faiss_sizes).split(",") if x]
    args.faiss_wrapper_sizes = [int(x) for x in str(args.faiss_wrapper_sizes).split(",") if x]
    if "fp32" not in args.numerics:
        args.numerics = ["fp32", *args.numerics]
    if args.peers == ["all"]:
        args.peers = list(PEERS)
    elif args.peers == ["none"]:
        args.peers = []
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        p.error(f"unknown peers {unknown}; choose from all, none, {', '.join(PEERS)}")
    return args


def run_encoder(args: argparse.Namespace, model: Any, result: dict[str, Any], bar: Any) -> Any:
    from embedder.numerics import default_threads

    threads = default_threads()
    work = encoder_bench.load_workload(model.encoder, args.n, args.seed)
    variants = encoder_bench.make_variants(model, args.model, args.numerics, threads)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        failed: dict[str, str] = {}
        if args.peers:
            bar.set_description("peers: export/convert")
            n_calib = 64 if args.quick else 300  # NNCF's default subset is 300
            calib = encoder_bench.calibration_texts(model.encoder, n_calib, args.seed)
            ready, failed = prepare_peers(
                args.peers, args.model / "encoder", Path(tmp), threads, calib
            )
            variants.update(ready)
        bar.reset(total=args.n * len(variants))
        bar.set_description("encoder")
        state = encoder_bench.run_interleaved(
            variants, work.texts, chunks=args.chunks, budget_s=args.budget_s, progress=bar
        )
    peer_int8 = {k: PEERS[k].int8 for k in args.peers if k in state}
    summary = encoder_bench.summarize(
        state, work, model, result.get("peak"), args.head, args.max_points, peer_int8
    )
    # What `serve`, `batch` and `embed` run on this machine (heads.model.load_encoder's probe or
    # its cached result), beside what the bench measured: the two should name the same numerics.
    from heads.model import load_encoder

    summary["serving_choice"] = load_encoder(args.model, None, threads=threads).numerics_choice
    summary["peers_failed"] = failed
    summary["peer_engines"] = {k: PEERS[k].engine for k in args.peers}
    summary["peer_adopted_as"] = {k: PEERS[k].adopted_as for k in args.peers if PEERS[k].adopted_as}
    summary["peer_versions"] = peer_versions() if args.peers else {}
    summary.update(
        n=args.n,
        threads=threads,
        mean_tokens=sum(work.lengths) / len(work.lengths),
        max_seq_length=model.encoder.max_seq_length,
    )
    result["encoder"] = summary
    return work, state


def peer_versions() -> dict[str, str]:
    """Installed versions of the peer engines' packages (absent ones left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "sentence-transformers", "onnxruntime", "openvino", "nncf", "ctranslate2",
        "optimum", "optimum-onnx", "optimum-intel", "fastembed", "infinity-emb",
    ):  # fmt: skip
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def scaling_extra(result: dict[str, Any]) -> list[str]:
    """Numerics to sweep beside fp32 and the chosen one: what the server chose on this machine,
    and our numerics on the fastest peer's engine when we adopted it (issue 13, item 5)."""
    from bench.render import fastest_peer

    enc = result.get("encoder") or {}
    out = []
    serving = (enc.get("serving_choice") or {}).get("chosen")
    if serving:
        out.append(serving)
    best = fastest_peer(enc) if enc else None
    adopted = (enc.get("peer_adopted_as") or {}).get(best) if best else None
    if adopted:
        out.append(adopted)
    return out


def run_scaling(
    args: argparse.Namespace, model: Any, work: Any, chosen: str, extra: Sequence[str] = ()
) -> dict[str, Any]:
    from embedder.encoder import ProfileEncoder
    from embedder.numerics import allowed_cpus, physical_cores

    out = {}
    threads = sorted({1, physical_cores(), len(allowed_cpus())})
    for num in dict.fromkeys(["fp32", chosen, *extra]):
        enc = ProfileEncoder(model.encoder.st_model, assembly=model.encoder.assembly, numerics=num)
        out[num] = encoder_bench.scaling(
            enc,
            work.texts,
            count=args.scaling_count,
            thread_counts=threads if num == chosen else (),
        )
    return out


def run_grpc(args: argparse.Namespace) -> dict[str, Any]:
    out = args.out.parent / "grpc_throughput_small.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench/grpc_throughput.py"),
        "--model",
        str(args.model),
        "--n",
        str(args.grpc_n),
        "--latency-n",
        str(max(10, args.grpc_n // 4)),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not (args.model / "model.json").is_file():
        logger.error("no model at %s: run `profile-embed build-default` first", args.model)
        return 2
    from tqdm.auto import tqdm

    from embedder.numerics import default_threads
    from heads.model import ProfileModel

    start = time.perf_counter()
    model = ProfileModel.load(args.model, numerics="fp32")
    config = model.encoder.transformer.auto_model.config
    result: dict[str, Any] = {
        "machine": machine_info(),
        "model": str(args.model),
        "embedding_version": model.encoder.embedding_version,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "command": " ".join([".venv/bin/python bench/run_all.py", *(argv or sys.argv[1:])]),
        "out": os.path.relpath(args.out, ROOT),
    }
    save = lambda: write_json(args.out, result)  # noqa: E731
    bar = tqdm(total=len(args.sections), desc="bench", unit="step")
    if "peak" in args.sections:
        bar.set_description("matmul peak")
        result["peak"] = matmul_peak(
            hidden=int(config.hidden_size),
            ffn=int(config.intermediate_size),
            threads=default_threads(),
        )
        save()
    work: Any = None
    state: dict[str, Any] = {}
    chosen = "fp32"
    if "encoder" in args.sections:
        work, state = run_encoder(args, model, result, bar)
        chosen = result["encoder"]["chosen"]
        save()
    if "scaling" in args.sections:
        bar.set_description("scaling")
        if work is None:
            work = encoder_bench.load_workload(model.encoder, min(args.n, 256), args.seed)
        result["scaling"] = run_scaling(args, model, work, chosen, scaling_extra(result))
        save()
    if "faiss" in args.sections:
        bar.reset(total=len(args.faiss_sizes))
        bar.set_description("faiss")
        base = state["fp32"]["vectors"] if state else None
        result["faiss"] = index_bench.run(
            args.faiss_sizes,
            base=base,
            n_queries=args.faiss_queries,
            wrapper_sizes=args.faiss_wrapper_sizes,
            seed=args.seed,
            progress=bar,
        )
        save()
    if "grpc" in args.sections and args.grpc_n > 0:
        bar.set_description("gRPC")
        del model
        result["grpc"] = run_grpc(args)
    bar.close()
    result["seconds"] = time.perf_counter() - start
    save()
    if args.doc_block == "peers":
        body = render_peers(result)
        print(body)
        if not args.no_doc:
            write_section(args.doc, body, PEERS_START, PEERS_END)
            logger.info("wrote %s and the peer block in %s", args.out, args.doc)
        return 0
    body = render(result)
    print(body)
    if not args.no_doc:
        write_section(args.doc, body)
        logger.info("wrote %s and the table in %s", args.out, args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
