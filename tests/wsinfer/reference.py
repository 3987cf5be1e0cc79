#!/usr/bin/env python3
"""WSInfer's recipe, as a reference for Tessera's compatibility tests.

For every patch of a Tessera patches.csv (level-0 minx, miny, width, height), this reads the
region at level 0 through OpenSlide (openslide-python), as WSInfer 0.6 does, applies the model
config's transforms with torchvision's semantics for PIL images, runs the ONNX model with ONNX
Runtime and applies softmax, as WSInfer does. It prints JSON: {"rows": [[minx, miny, [p...]]]}.

The transforms are computed without torch (`wsinfer_tensor` of models/convert_wsinfer.py, which
the converter uses too): Resize is PIL's `Image.resize(size, BILINEAR)`
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

from pathlib import Path

import numpy as np
import onnxruntime as ort
import openslide

# The transforms, as the converter applies them when it checks a conversion: one definition.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models"))
from convert_wsinfer import wsinfer_tensor  # noqa: E402


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
            x = wsinfer_tensor(img, config["transform"])
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
