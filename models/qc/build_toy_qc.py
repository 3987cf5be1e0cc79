#!/usr/bin/env python3
"""A toy slide-QC model, for testing `--qc-model`: NOT a trained model.

No trained artefact model (GrandQC and its peers) can be obtained here, so the tests of the
QC-model path use this one: a dense (per-pixel) ONNX model with two classes, `background` and
`pen marking`, whose weights are set by hand, not learned. Per pixel, on ToTensor's 0-1 input,
the pen logit is SCALE * (OD_red - OD_blue) - BIAS, with OD = -ln(value + 1/255) the optical
density, and the background logit 0: softmax calls a pixel pen where red is absorbed more
than blue by more than BIAS / SCALE (0.75 by default). Blue marker ink adds about 1.3 to that
difference over any tissue (densities add, Beer-Lambert), while eosin and haematoxylin alone
stay under about 0.3. A 4 x 4 average pool follows, so the output is a quarter of the tile's
side, as real segmentation models' outputs often are.

It exists to show that a lab's dense QC model runs through Tessera's dense machinery and feeds
the artefact masks; it is no pen detector worth using (the built-in one is far better).

Writes OUT/model.onnx and OUT/config.json (WSInfer spec 1.0 with tessera.dense and, with
--map, tessera.qc_classes).

Usage: pip install onnx numpy
       python3 build_toy_qc.py /tmp/qc-toy [--spacing 4] [--side 64] [--class-name "pen marking"]
"""

import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(side, scale, bias, opset=13):
    w = np.zeros((2, 3, 1, 1), np.float32)
    # On ln(value): OD_red - OD_blue = ln(blue) - ln(red).
    w[1, :, 0, 0] = [-scale, 0.0, scale]
    b = np.array([0.0, -bias], np.float32)
    nodes = [
        helper.make_node("Add", ["input", "eps"], ["lifted"]),
        helper.make_node("Log", ["lifted"], ["log"]),
        helper.make_node("Conv", ["log", "w", "b"], ["logits_full"], kernel_shape=[1, 1]),
        helper.make_node("AveragePool", ["logits_full"], ["logits"], kernel_shape=[4, 4],
                         strides=[4, 4]),
    ]
    graph = helper.make_graph(
        nodes, "toy_qc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["N", 2, side // 4, side // 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array(1 / 255, np.float32), "eps")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tessera models/qc/build_toy_qc.py")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--side", type=int, default=64, help="tile side in model pixels")
    ap.add_argument("--spacing", type=float, default=4.0, help="spacing_um_px")
    ap.add_argument("--scale", type=float, default=8.0)
    ap.add_argument("--bias", type=float, default=6.0)
    ap.add_argument("--class-name", default="pen marking",
                    help="the artefact class's name (Tessera maps names to kinds)")
    ap.add_argument("--map", metavar="KIND",
                    help="write tessera.qc_classes mapping the class to KIND")
    a = ap.parse_args()
    if a.side % 4:
        raise SystemExit("--side must be a multiple of 4")
    os.makedirs(a.out, exist_ok=True)
    onnx.save(build(a.side, a.scale, a.bias), os.path.join(a.out, "model.onnx"))
    tessera = {
        "description": "TOY QC model with hand-set weights (red minus blue optical density), for testing "
                       "--qc-model only; it is not trained and detects nothing reliably.",
        "version": "toy",
        "outputs_probabilities": False,
        "dense": {"activation": "softmax", "overlap_pixels": 0, "map_cell_pixels": 4},
    }
    if a.map:
        tessera["qc_classes"] = {a.class_name: a.map}
    config = {
        "spec_version": "1.0", "architecture": "toy-qc", "num_classes": 2,
        "class_names": ["background", a.class_name], "patch_size_pixels": a.side,
        "spacing_um_px": a.spacing, "transform": [{"name": "ToTensor"}],
        "tessera": tessera,
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"wrote {a.out}/model.onnx and config.json")
