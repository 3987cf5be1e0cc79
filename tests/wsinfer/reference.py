#!/usr/bin/env python3
"""WSInfer's recipe, as a reference for Tessera's compatibility tests.

For every patch of a Tessera patches.csv (level-0 minx, miny, width, height), this reads the
region at level 0 through OpenSlide (openslide-python), as WSInfer 0.6 does, applies the model
config's transforms with torchvision's semantics for PIL images, runs the ONNX model with ONNX
Runtime and applies softmax, as WSInfer does. It prints JSON: {"rows": [[minx, miny, [p...]]]}.

The transforms are computed without torch: Resize is PIL's `Image.resize(size, BILINEAR)`
(what torchvision's Resize calls for a PIL image; an int size resizes the shorter side,
`int(size * long / short)` for the longer), CenterCrop offsets are `round((size - crop) / 2)`,
ToTensor divides by 255 in float32 and Normalize subtracts and divides in float32.
`--check-torchvision` (needs torch and torchvision) also runs torchvision's own transforms on
every patch and prints the largest difference of the input tensors to stderr; it was run once
on a development machine (BENCHMARKS.md).

Usage: python3 reference.py SLIDE MODEL_DIR PATCHES_CSV [--limit N] [--check-torchvision]
Needs: pip install openslide-bin openslide-python onnxruntime numpy pillow
"""

import argparse
import csv
import json
import sys

import numpy as np
import onnxruntime as ort
import openslide
from PIL import Image


def resize_size(size, w, h):
    if isinstance(size, list):
        return size[1], size[0]  # PIL wants (width, height); the config gives [h, w]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (size, new_long) if w <= h else (new_long, size)


def center_crop(img, size):
    ch, cw = (size, size) if isinstance(size, int) else size
    w, h = img.size
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def transform(img, steps):
    """PIL image -> float32 CHW array, torchvision's semantics computed with PIL and numpy."""
    x = None
    for t in steps:
        name, args = t["name"], t.get("arguments", {})
        if name == "Resize":
            size = resize_size(args["size"], *img.size)
            if size != img.size:
                img = img.resize(size, Image.BILINEAR)
        elif name == "CenterCrop":
            img = center_crop(img, args["size"])
        elif name == "ToTensor":
            x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        elif name == "Normalize":
            mean = np.array(args["mean"], np.float32)[:, None, None]
            std = np.array(args["std"], np.float32)[:, None, None]
            x = (x - mean) / std
        else:
            raise SystemExit(f"unknown transform {name}")
    return x


def torchvision_transform(img, steps):
    import torchvision.transforms as T
    ops = []
    for t in steps:
        args = t.get("arguments", {})
        ops.append({"Resize": lambda: T.Resize(args["size"]),
                    "CenterCrop": lambda: T.CenterCrop(args["size"]),
                    "ToTensor": lambda: T.ToTensor(),
                    "Normalize": lambda: T.Normalize(args["mean"], args["std"])}[t["name"]]())
    return T.Compose(ops)(img).numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("slide")
    ap.add_argument("model")
    ap.add_argument("patches")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--check-torchvision", action="store_true")
    a = ap.parse_args()
    config = json.load(open(f"{a.model}/config.json"))
    sess = ort.InferenceSession(f"{a.model}/model.onnx", providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    slide = openslide.OpenSlide(a.slide)
    rows = list(csv.DictReader(open(a.patches)))
    if a.limit:
        rows = rows[: a.limit]
    out, worst = [], 0.0
    for i in range(0, len(rows), 16):
        chunk = rows[i:i + 16]
        xs = []
        for r in chunk:
            loc = (int(r["minx"]), int(r["miny"]))
            size = (int(r["width"]), int(r["height"]))
            img = slide.read_region(loc, 0, size).convert("RGB")
            x = transform(img, config["transform"])
            if a.check_torchvision:
                worst = max(worst, float(np.abs(torchvision_transform(img, config["transform"]) - x).max()))
            xs.append(x)
        logits = sess.run(None, {name: np.stack(xs)})[0]
        if config.get("tessera", {}).get("outputs_probabilities"):
            probs = logits
        else:
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
        for r, p in zip(chunk, probs):
            out.append([int(r["minx"]), int(r["miny"]), [float(v) for v in p]])
    if a.check_torchvision:
        print(f"torchvision vs PIL/numpy: largest input difference {worst:.3g} over {len(rows)} patches",
              file=sys.stderr)
    json.dump({"rows": out}, sys.stdout)


if __name__ == "__main__":
    main()
