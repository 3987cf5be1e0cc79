#!/usr/bin/env python3
"""Turns a WSInfer zoo model folder (TorchScript + config.json) into a Tessera model folder.

Writes OUT/model.onnx (ONNX, dynamic batch, input "input", output "logits") and OUT/config.json
(WSInfer's config unchanged: Tessera reads WSInfer's schema and applies its transforms with
torchvision's semantics). Then it checks the conversion: ONNX Runtime and TorchScript on the same
input tensors, random patches and, with --slide, real patches read through OpenSlide at level 0
and preprocessed as WSInfer does (PIL resize, ToTensor, Normalize). It prints the largest
difference of the logits and of the softmax probabilities and exits 1 when either exceeds
--tolerance, leaving no model.onnx behind.

Usage: python3 convert_wsinfer.py WSINFER_DIR OUT_DIR [--slide SLIDE] [--opset 17]
       [--torchscript FILE] [--tolerance 1e-4]
WSINFER_DIR holds config.json and the TorchScript file (torchscript_model.pt, as in WSInfer's
zoo on Hugging Face; --torchscript names another).
Needs: pip install torch onnx onnxruntime numpy pillow (torch only for this script; Tessera
never needs it), and openslide-bin openslide-python for --slide.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np


def wsinfer_tensor(img, transforms):
    """A PIL image through the config's transforms (torchvision's semantics, PIL and numpy).
    tests/wsinfer/reference.py uses it as WSInfer's recipe."""
    from PIL import Image
    x = None
    for t in transforms:
        name, args = t["name"], t.get("arguments", {})
        if name == "Resize":
            size = args["size"]
            w, h = img.size
            if isinstance(size, list):
                new = (size[1], size[0])
            elif w <= h:
                new = (size, int(size * h / w))
            else:
                new = (int(size * w / h), size)
            if new != img.size:
                img = img.resize(new, Image.BILINEAR)
        elif name == "CenterCrop":
            ch, cw = (args["size"],) * 2 if isinstance(args["size"], int) else args["size"]
            w, h = img.size
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            img = img.crop((left, top, left + cw, top + ch))
        elif name == "ToTensor":
            x = np.asarray(img, np.float32).transpose(2, 0, 1) / np.float32(255)
        elif name == "Normalize":
            x = (x - np.array(args["mean"], np.float32)[:, None, None]) / np.array(
                args["std"], np.float32)[:, None, None]
        else:
            raise SystemExit(f"config.json: unknown transform {name}")
    return x


def input_side(config):
    """The model's input [height, width]: square patches through Resize and CenterCrop."""
    hw = [config["patch_size_pixels"]] * 2
    for t in config["transform"]:
        if t["name"] in ("Resize", "CenterCrop"):
            size = t["arguments"]["size"]
            hw = [size, size] if isinstance(size, int) else list(size)
    return hw


def slide_patches(path, config, n, rng):
    """n tissue-ish patches of the slide at the model's µm/px, read at level 0 as WSInfer does."""
    import openslide
    s = openslide.OpenSlide(path)
    mpp = float(s.properties.get(openslide.PROPERTY_NAME_MPP_X, 0) or 0)
    if mpp <= 0:
        raise SystemExit(f"{path}: no µm/px in the file")
    side = int(round(config["patch_size_pixels"] * config["spacing_um_px"] / mpp))
    w, h = s.dimensions
    out, tries = [], 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        x, y = int(rng.integers(0, max(1, w - side))), int(rng.integers(0, max(1, h - side)))
        img = s.read_region((x, y), 0, (side, side)).convert("RGB")
        a = np.asarray(img)
        if (a.max(axis=2).astype(int) - a.min(axis=2)).mean() > 20:  # not blank glass
            out.append(wsinfer_tensor(img, config["transform"]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wsinfer_dir")
    ap.add_argument("out")
    ap.add_argument("--torchscript", default="torchscript_model.pt")
    ap.add_argument("--slide")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import onnx
    import onnxruntime as ort
    import torch

    config = json.load(open(os.path.join(a.wsinfer_dir, "config.json")))
    model = torch.jit.load(os.path.join(a.wsinfer_dir, a.torchscript), map_location="cpu").eval()
    h, w = input_side(config)
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=a.out, prefix=".convert-")
    onnx_path = os.path.join(tmp, "model.onnx")
    dummy = torch.zeros(2, 3, h, w)
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), onnx_path, input_names=["input"],
                          output_names=["logits"], opset_version=a.opset,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    onnx.checker.check_model(onnx.load(onnx_path))

    rng = np.random.default_rng(a.seed)
    batches = [("random", rng.random((8, 3, h, w), np.float32) * 4 - 2)]
    if a.slide:
        batches.append(("slide", np.stack(slide_patches(a.slide, config, 16, rng))))
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    worst_logit = worst_prob = 0.0
    for label, x in batches:
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"input": x})[0]
        sm = lambda v: np.exp(v - v.max(1, keepdims=True)) / np.exp(v - v.max(1, keepdims=True)).sum(1, keepdims=True)
        dl, dp = float(np.abs(ref - got).max()), float(np.abs(sm(ref) - sm(got)).max())
        print(f"{label} patches ({len(x)}): largest difference ONNX Runtime vs TorchScript: "
              f"logits {dl:.3g}, probabilities {dp:.3g}")
        worst_logit, worst_prob = max(worst_logit, dl), max(worst_prob, dp)
    if worst_prob > a.tolerance or worst_logit > a.tolerance * 100:
        shutil.rmtree(tmp)
        print(f"FAILED: differences exceed the tolerance {a.tolerance}", file=sys.stderr)
        return 1
    os.replace(onnx_path, os.path.join(a.out, "model.onnx"))
    shutil.rmtree(tmp)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"wrote {a.out}/model.onnx and config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
