#!/usr/bin/env python3
"""Standard architectures with RANDOM weights, for speed measurements only.

Writes OUT/model.onnx and OUT/config.json (WSInfer spec 1.0) for ResNet-18, ResNet-50 or
MobileNetV2 at 224 x 224, NCHW, with seeded He-normal weights and batch norm folded away
(as inference runtimes fold it anyway). The outputs are meaningless: never use these models
for anything but timing `tessera analyze`. They are not committed (ResNet-50 is ~100 MB).

Usage: pip install onnx numpy
       python3 build_random.py resnet18 /tmp/models/resnet18
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Graph:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    def conv(self, x, cin, cout, k, stride=1, group=1, act="relu"):
        w = self.rng.normal(0, np.sqrt(2.0 / (k * k * cin / group)), (cout, cin // group, k, k))
        wn, bn, y = self.name("w"), self.name("b"), self.name("conv")
        self.inits += [
            numpy_helper.from_array(w.astype(np.float32), wn),
            numpy_helper.from_array(np.zeros(cout, np.float32), bn),
        ]
        pad = k // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, wn, bn], [y], kernel_shape=[k, k], strides=[stride, stride],
            pads=[pad] * 4, group=group))
        if act == "relu":
            z = self.name("relu")
            self.nodes.append(helper.make_node("Relu", [y], [z]))
            return z
        if act == "relu6":
            z, lo, hi = self.name("relu6"), self.name("lo"), self.name("hi")
            self.inits += [numpy_helper.from_array(np.array(0, np.float32), lo),
                           numpy_helper.from_array(np.array(6, np.float32), hi)]
            self.nodes.append(helper.make_node("Clip", [y, lo, hi], [z]))
            return z
        return y

    def add(self, a, b, relu=True):
        y = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y]))
        if not relu:
            return y
        z = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [y], [z]))
        return z

    def head(self, x, cin, classes):
        p, f, y = self.name("gap"), self.name("flat"), "logits"
        w = self.rng.normal(0, np.sqrt(1.0 / cin), (classes, cin)).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, "fc_w"),
                       numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b")]
        self.nodes += [helper.make_node("GlobalAveragePool", [x], [p]),
                       helper.make_node("Flatten", [p], [f], axis=1),
                       helper.make_node("Gemm", [f, "fc_w", "fc_b"], [y], transB=1)]
        return y


def resnet(g, x, blocks, bottleneck):
    x = g.conv(x, 3, 64, 7, 2)
    y = g.name("pool")
    g.nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = y, 64
    for stage, (n, width) in enumerate(zip(blocks, [64, 128, 256, 512])):
        cout = width * 4 if bottleneck else width
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            if bottleneck:
                h = g.conv(x, cin, width, 1)
                h = g.conv(h, width, width, 3, stride)
                h = g.conv(h, width, cout, 1, act=None)
            else:
                h = g.conv(x, cin, width, 3, stride)
                h = g.conv(h, width, width, 3, act=None)
            short = x if (stride == 1 and cin == cout) else g.conv(x, cin, cout, 1, stride, act=None)
            x, cin = g.add(h, short), cout
    return x, cin


def mobilenet_v2(g, x):
    x, cin = g.conv(x, 3, 32, 3, 2, act="relu6"), 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = g.conv(x, cin, hidden, 1, act="relu6") if t != 1 else x
            h = g.conv(h, hidden, hidden, 3, stride, group=hidden, act="relu6")
            h = g.conv(h, hidden, c, 1, act=None)
            x = g.add(h, x, relu=False) if stride == 1 and cin == c else h
            cin = c
    return g.conv(x, cin, 1280, 1, act="relu6"), 1280


def build(arch, classes=2, seed=0):
    g = Graph(seed)
    if arch == "resnet18":
        x, c = resnet(g, "input", [2, 2, 2, 2], bottleneck=False)
    elif arch == "resnet50":
        x, c = resnet(g, "input", [3, 4, 6, 3], bottleneck=True)
    elif arch == "mobilenetv2":
        x, c = mobilenet_v2(g, "input")
    else:
        raise SystemExit(f"unknown architecture {arch}: resnet18, resnet50 or mobilenetv2")
    g.head(x, c, classes)
    graph = helper.make_graph(
        g.nodes, f"{arch}_random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="tessera models/random/build_random.py")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    arch, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    onnx.save(build(arch), os.path.join(out, "model.onnx"))
    config = {
        "spec_version": "1.0", "architecture": arch, "num_classes": 2,
        "class_names": ["class0", "class1"], "patch_size_pixels": 224, "spacing_um_px": 0.5,
        "transform": [{"name": "Resize", "arguments": {"size": 224}}, {"name": "ToTensor"},
                      {"name": "Normalize", "arguments": {"mean": [0.485, 0.456, 0.406],
                                                          "std": [0.229, 0.224, 0.225]}}],
        "tessera": {"description": f"{arch} with RANDOM weights: for speed measurements only; "
                                   "its outputs mean nothing.", "version": "random"},
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"wrote {out}/model.onnx and config.json")
