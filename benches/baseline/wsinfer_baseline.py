#!/usr/bin/env python3
"""The way patch classifiers are run today, to compare `tessera analyze` against.

A WSInfer-style pipeline: openslide-python `read_region` per patch, numpy preprocessing
(ToTensor, Normalize), onnxruntime, and a thread pool that prefetches whole batches ahead of
inference (as WSInfer's DataLoader workers do). For a fair comparison it analyses exactly the
patches Tessera analysed — the grid, read level and read size come from Tessera's own
`patches.csv` and `result.json` — with the same model file, batch size and threads.

It prints patches/s over the read + preprocess + inference loop (the same span as Tessera's
`timings_s.inference_s`) and the largest difference between its probabilities and Tessera's.

    python3 benches/baseline/wsinfer_baseline.py SLIDE OUT/<slide> [--model DIR]
        [--batch-size 32] [--threads 2] [--workers 2] [--prefetch 4] [--repeats 1] [--limit N]

Needs: pip install openslide-bin openslide-python onnxruntime numpy.
"""

import argparse
import concurrent.futures as cf
import csv
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
import openslide


def load_grid(out_dir):
    with open(os.path.join(out_dir, "result.json")) as f:
        result = json.load(f)
    with open(os.path.join(out_dir, "patches.csv")) as f:
        rows = list(csv.DictReader(f))
    return result, rows


def preprocess_fn(config):
    """ToTensor and Normalize from the WSInfer config, NCHW or NHWC."""
    mean = np.zeros(3, np.float32)
    std = np.ones(3, np.float32)
    to_unit = False
    for t in config.get("transform", []):
        if t["name"] == "ToTensor":
            to_unit = True
        elif t["name"] == "Normalize":
            mean = np.asarray(t["arguments"]["mean"], np.float32)
            std = np.asarray(t["arguments"]["std"], np.float32)
    layout = config.get("tessera", {}).get("layout", "NCHW")

    def pre(rgb):  # uint8 H×W×3
        x = rgb.astype(np.float32)
        if to_unit:
            x /= np.float32(255.0)
        x = (x - mean) / std
        return x.transpose(2, 0, 1) if layout == "NCHW" else x

    return pre


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slide")
    ap.add_argument("tessera_dir", help="Tessera's output folder for this slide")
    ap.add_argument("--model", help="model folder (default: the one Tessera used)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="onnxruntime intra-op threads")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="patch-reading threads")
    ap.add_argument("--prefetch", type=int, default=4, help="batches read ahead")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0,
                    help="only the first N patches (for slow models; rates stay comparable)")
    args = ap.parse_args()

    result, rows = load_grid(args.tessera_dir)
    if args.limit > 0:
        rows = rows[:args.limit]
    params = result["parameters"]
    config = result["model"]["config"]
    model_dir = args.model or os.path.join(os.path.dirname(__file__), "..", "..", "models",
                                           result["model"]["name"])
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    size = config["patch_size_pixels"]
    level, side = params["read_level"], params["read_side"]
    pre = preprocess_fn(config)
    classes = config["class_names"]
    probs_out = config.get("tessera", {}).get("outputs_probabilities", False)

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    slide = openslide.OpenSlide(args.slide)
    locations = [(int(r["minx"]), int(r["miny"])) for r in rows]

    def read_patch(loc):
        region = slide.read_region(loc, level, (side, side))  # RGBA, outside transparent
        if region.size != (size, size):
            region = region.resize((size, size), resample=4)  # PIL BOX: area averaging
        rgba = np.asarray(region, np.float32)
        a = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * a + 255.0 * (1.0 - a)  # outside the slide is white, as Tessera
        return pre(np.rint(rgb).astype(np.uint8))

    def read_batch(start):
        chunk = locations[start:start + args.batch_size]
        return np.stack([read_patch(loc) for loc in chunk])

    def run_once():
        probs = []
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(args.workers) as pool:
            starts = list(range(0, len(locations), args.batch_size))
            pending = [pool.submit(read_batch, s) for s in starts[:args.prefetch]]
            next_i = len(pending)
            while pending:
                batch = pending.pop(0).result()
                if next_i < len(starts):
                    pending.append(pool.submit(read_batch, starts[next_i]))
                    next_i += 1
                out = session.run(None, {input_name: batch})[0]
                if not probs_out:
                    if out.shape[1] == 1:
                        out = 1.0 / (1.0 + np.exp(-out))
                    else:
                        e = np.exp(out - out.max(axis=1, keepdims=True))
                        out = e / e.sum(axis=1, keepdims=True)
                probs.append(out)
        return time.perf_counter() - t, np.concatenate(probs)

    runs = []
    for _ in range(max(1, args.repeats)):
        elapsed, probs = run_once()
        runs.append(len(locations) / elapsed)
    tessera = np.asarray([[float(r[f"prob_{c}"]) for c in classes] for r in rows], np.float32)
    diff = float(np.abs(probs - tessera).max()) if len(rows) else 0.0
    tess_rate = result["patches_analysed"] / result["timings_s"]["inference_s"]
    median = statistics.median(runs)
    print(json.dumps({
        "patches": len(locations),
        "baseline_patches_per_s": round(median, 2),
        "baseline_runs": [round(r, 2) for r in runs],
        "tessera_patches_per_s": round(tess_rate, 2),
        "ratio": round(tess_rate / median, 3),
        "max_abs_prob_diff": diff,
        "batch_size": args.batch_size, "threads": args.threads, "workers": args.workers,
        "openslide": openslide.__library_version__, "onnxruntime": ort.__version__,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
