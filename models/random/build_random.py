#!/usr/bin/env python3
"""Standard architectures with RANDOM weights, for speed measurements and compatibility tests.

Writes OUT/model.onnx and OUT/config.json (WSInfer spec 1.0) for ResNet-18, ResNet-50,
MobileNetV2 or a tiny three-convolution net, NCHW, with seeded He-normal weights and batch norm
folded away (as inference runtimes fold it anyway). The outputs are meaningless: never use these
models for anything but timing `tessera analyze` and checking that Tessera computes what ONNX
Runtime computes on WSInfer's preprocessing. They are not committed (ResNet-50 is ~100 MB).

The options shape the file the way real exporters do, for the loading tests: the batch
dimension's name (PyTorch writes `batch_size`, tf2onnx `unk__N`), dynamic height and width,
intermediate shape annotations (`value_info`) whose symbolic names differ from the input's,
the opset (13-18), and weights in an external `model.onnx.data` file. `--calibrate` scales the
classifier so that logits on H&E images (`--calibrate-on`, or smooth H&E-coloured fields)
spread around zero (needs onnxruntime): softmax then stays away from 0 and 1, where any preprocessing difference would
vanish.

Usage: pip install onnx numpy
       python3 build_random.py resnet18 /tmp/models/resnet18
       python3 build_random.py resnet50 /tmp/models/resnet50-fp16 --fp16
       python3 build_random.py tiny /tmp/m --opset 18 --batch-name batch_size --dynamic-hw \
           --value-info --external-data
"""

import argparse
import json
import os

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


def tiny(g, x):
    x = g.conv(x, 3, 8, 3, 2)
    x = g.conv(x, 8, 16, 3, 2)
    return g.conv(x, 16, 16, 3, 2), 16


# Output rank of each operator the builders use (for value_info annotations).
RANK = {"Conv": 4, "Relu": 4, "Clip": 4, "Add": 4, "MaxPool": 4, "GlobalAveragePool": 4,
        "Flatten": 2, "Gemm": 2}


def build(arch, classes=2, seed=0, opset=13, batch_name="N", dynamic_hw=False,
          value_info=False, side=224, dense=False):
    g = Graph(seed)
    if arch == "resnet18":
        x, c = resnet(g, "input", [2, 2, 2, 2], bottleneck=False)
    elif arch == "resnet50":
        x, c = resnet(g, "input", [3, 4, 6, 3], bottleneck=True)
    elif arch == "mobilenetv2":
        x, c = mobilenet_v2(g, "input")
    elif arch == "tiny":
        x, c = tiny(g, "input")
    else:
        raise SystemExit(f"unknown architecture {arch}: resnet18, resnet50, mobilenetv2 or tiny")
    if dense:
        # A per-pixel classifier: a 1x1 convolution to the classes, no pooling.
        w = g.rng.normal(0, np.sqrt(1.0 / c), (classes, c, 1, 1)).astype(np.float32)
        g.inits += [numpy_helper.from_array(w, "cls_w"),
                    numpy_helper.from_array(np.zeros(classes, np.float32), "cls_b")]
        g.nodes.append(helper.make_node("Conv", [x, "cls_w", "cls_b"], ["logits"], kernel_shape=[1, 1]))
    else:
        g.head(x, c, classes)
    hw = ["height", "width"] if dynamic_hw else [side, side]
    infos = []
    if value_info:
        # As PyTorch 2.x exports do: every intermediate annotated, with its own names.
        for i, node in enumerate(g.nodes):
            for out in node.output:
                if out == "logits":
                    continue
                dims = ["batch_size"] + [f"s{i}_{k}" for k in range(RANK[node.op_type] - 1)]
                infos.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, dims))
    out_batch = "batch_size" if value_info else batch_name
    graph = helper.make_graph(
        g.nodes, f"{arch}_random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch_name, 3] + hw)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       [out_batch, classes] + (["oh", "ow"] if dense else []))],
        g.inits, value_info=infos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tessera models/random/build_random.py")
    model.ir_version = 8 if opset >= 15 else 7
    onnx.checker.check_model(model)
    return model


def to_fp16(model):
    """The same network in half precision, as a lab's converted model is (onnxconverter-common's
    convert_float_to_float16 with keep_io_types): float16 weights and activations, the input
    cast to float16 first and the logits cast back to float32, so callers still pass and read
    float32."""
    g = model.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in g.value_info:
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    for node in g.node:
        node.input[:] = ["input_fp16" if i == "input" else i for i in node.input]
        node.output[:] = ["logits_fp16" if o == "logits" else o for o in node.output]
    g.node.insert(0, helper.make_node("Cast", ["input"], ["input_fp16"], to=TensorProto.FLOAT16))
    g.node.append(helper.make_node("Cast", ["logits_fp16"], ["logits"], to=TensorProto.FLOAT))
    onnx.checker.check_model(model)
    return model


def smooth_images(n, side, seed):
    """Seeded smooth images in H&E colours (pink to purple), as floats 0-1, NCHW."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 3, 8, 8))
    ramp = np.linspace(0, 7, side)
    i0 = np.floor(ramp).astype(int).clip(0, 6)
    f = (ramp - i0)[None, None, :]
    rows = coarse[:, :, i0, :] * (1 - f[..., None]) + coarse[:, :, i0 + 1, :] * f[..., None]
    img = rows[:, :, :, i0] * (1 - f[:, :, None, :]) + rows[:, :, :, i0 + 1] * f[:, :, None, :]
    pink, purple = np.array([0.93, 0.6, 0.8]), np.array([0.45, 0.3, 0.6])
    mix = img.mean(axis=1, keepdims=True)
    return (pink[None, :, None, None] * (1 - mix) + purple[None, :, None, None] * mix
            + 0.1 * (img - 0.5)).astype(np.float32)


def crops(paths, side, seed):
    """Seeded crops of H&E images (PIL), resized to side, as floats 0-1, NCHW."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        for _ in range(3):
            c = int(rng.integers(min(w, h) // 2, min(w, h) + 1))
            x0, y0 = int(rng.integers(0, w - c + 1)), int(rng.integers(0, h - c + 1))
            a = img.crop((x0, y0, x0 + c, y0 + c)).resize((side, side), Image.BILINEAR)
            out.append(np.asarray(a, np.float32).transpose(2, 0, 1) / 255)
    return np.stack(out)


def calibrate(model, side, mean, std, images):
    """Scales and shifts the classifier so logits on H&E crops (or, without images, smooth
    H&E-coloured fields) have mean 0 and a spread of about 1.5 (needs onnxruntime)."""
    import onnxruntime as ort
    x = crops(images, side, seed=1) if images else smooth_images(16, side, seed=1)
    x = (x - np.array(mean, np.float32)[None, :, None, None]) / np.array(std, np.float32)[None, :, None, None]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x})[0].astype(np.float64)
    scale = 1.5 / max(logits.std(axis=0).mean(), 1e-12)
    shift = -logits.mean(axis=0) * scale
    inits = {t.name: t for t in model.graph.initializer}
    for name, new in [("fc_w", numpy_helper.to_array(inits["fc_w"]) * scale),
                      ("fc_b", numpy_helper.to_array(inits["fc_b"]) * scale + shift)]:
        inits[name].CopyFrom(numpy_helper.from_array(new.astype(np.float32), name))
    return model


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arch")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--opset", type=int, default=13)
    ap.add_argument("--batch-name", default="N")
    ap.add_argument("--dynamic-hw", action="store_true")
    ap.add_argument("--value-info", action="store_true")
    ap.add_argument("--external-data", action="store_true")
    ap.add_argument("--dense", action="store_true",
                    help="per-pixel output [N, classes, h/8, w/8], declared as tessera.dense "
                         "(softmax) in config.json")
    ap.add_argument("--overlap", type=int, default=0, help="dense tiles' overlap in pixels")
    ap.add_argument("--undeclared", action="store_true",
                    help="with --dense: leave tessera.dense out of config.json")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--calibrate-on", nargs="*", default=[], metavar="IMAGE",
                    help="H&E images to calibrate on (needs Pillow)")
    ap.add_argument("--side", type=int, default=224, help="model input side (Resize size)")
    ap.add_argument("--patch", type=int, default=224, help="patch_size_pixels")
    ap.add_argument("--spacing", type=float, default=0.5, help="spacing_um_px")
    ap.add_argument("--resize", help="tessera.resize (default: torchvision's bilinear)")
    ap.add_argument("--fp16", action="store_true",
                    help="half-precision weights and activations, float32 input and output")
    a = ap.parse_args()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    os.makedirs(a.out, exist_ok=True)
    model = build(a.arch, a.classes, a.seed, a.opset, a.batch_name, a.dynamic_hw, a.value_info,
                  a.side, a.dense)
    if a.calibrate:
        model = calibrate(model, a.side, mean, std, a.calibrate_on)
    if a.fp16:
        model = to_fp16(model)
    path = os.path.join(a.out, "model.onnx")
    if a.external_data:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=0)
    else:
        onnx.save(model, path)
    precision = " (float16)" if a.fp16 else ""
    tessera = {"description": f"{a.arch}{precision} with RANDOM weights: for speed measurements and "
                              "compatibility tests only; its outputs mean nothing.",
               "version": "random"}
    if a.resize:
        tessera["resize"] = a.resize
    if a.dense and not a.undeclared:
        tessera["dense"] = {"activation": "softmax", "overlap_pixels": a.overlap,
                            "map_cell_pixels": 8}
    config = {
        "spec_version": "1.0", "architecture": a.arch, "num_classes": a.classes,
        "class_names": [f"class{i}" for i in range(a.classes)], "patch_size_pixels": a.patch,
        "spacing_um_px": a.spacing,
        "transform": [{"name": "Resize", "arguments": {"size": a.side}}, {"name": "ToTensor"},
                      {"name": "Normalize", "arguments": {"mean": mean, "std": std}}],
        "tessera": tessera,
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"wrote {a.out}/model.onnx and config.json")
