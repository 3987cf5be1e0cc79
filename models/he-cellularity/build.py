#!/usr/bin/env python3
"""Builds Tessera's default model, he-cellularity, from first principles: no trained weights.

The graph scores how much haematoxylin (the stain of cell nuclei) a patch holds, using
Ruifrok & Johnston colour deconvolution with scikit-image's H&E-DAB vectors:

    OD      = -log10(clip(rgb, 1/255, 1))            per pixel, rgb in [0, 1] (after ToTensor)
    H       = max(OD · hed_from_rgb[:, 0], 0)         haematoxylin optical density per pixel
    density = mean over the patch of H
    logits  = [0, SLOPE · (density - MIDPOINT)]      -> softmax -> [p(low), p(high)]

It is a nuclear-density ("cellularity") score, useful to try the pipeline end to end and as
a rough map of cell-dense regions. It is not a tumour detector and has no diagnostic value.

Usage: python3 build.py [--batch N] [--out PATH]
  writes model.onnx beside this script (needs `pip install onnx`). --batch fixes the batch
  dimension (the committed model's is dynamic, "N"); tests use it to check fixed-batch models.
The output is deterministic: the same onnx version writes the same bytes.
"""

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# scikit-image's rgb_from_hed inverted (see ../shared/docs/formats.md, section 7); column 0
# maps optical density (R, G, B) to haematoxylin.
HED_FROM_RGB = np.array(
    [
        [1.87798274, -1.00767869, -0.55611582],
        [-0.06590806, 1.13473037, -0.13552180],
        [-0.60190736, -0.48041419, 1.57358807],
    ],
    dtype=np.float32,
)
MIDPOINT = 0.25  # mean haematoxylin OD at which a patch scores 0.5
SLOPE = 20.0  # logistic steepness per unit of mean OD
SIZE = 224


def build(batch="N") -> onnx.ModelProto:
    h_weights = HED_FROM_RGB[:, 0].reshape(1, 3, 1, 1)
    inits = [
        numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "min_i"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "max_i"),
        numpy_helper.from_array(np.array(-1.0 / np.log(10.0), dtype=np.float32), "neg_inv_ln10"),
        numpy_helper.from_array(h_weights.astype(np.float32), "h_weights"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(MIDPOINT, dtype=np.float32), "midpoint"),
        numpy_helper.from_array(np.array(SLOPE, dtype=np.float32), "slope"),
    ]
    nodes = [
        helper.make_node("Clip", ["input", "min_i", "max_i"], ["clipped"]),
        helper.make_node("Log", ["clipped"], ["ln"]),
        helper.make_node("Mul", ["ln", "neg_inv_ln10"], ["od"]),
        helper.make_node("Conv", ["od", "h_weights"], ["h_raw"], kernel_shape=[1, 1]),
        helper.make_node("Max", ["h_raw", "zero"], ["h"]),
        helper.make_node("GlobalAveragePool", ["h"], ["density4"]),
        helper.make_node("Flatten", ["density4"], ["density"], axis=1),
        helper.make_node("Sub", ["density", "midpoint"], ["centred"]),
        helper.make_node("Mul", ["centred", "slope"], ["logit_high"]),
        helper.make_node("Mul", ["density", "zero"], ["logit_low"]),
        helper.make_node("Concat", ["logit_low", "logit_high"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "he_cellularity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 2])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="tessera models/he-cellularity/build.py",
    )
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, help="fixed batch size (default: dynamic)")
    parser.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx"),
    )
    args = parser.parse_args()
    onnx.save(build(args.batch if args.batch else "N"), args.out)
    print(f"wrote {args.out}")
