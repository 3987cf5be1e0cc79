#!/usr/bin/env python3
"""libjpeg-turbo's cost per tile, through Pillow, on the tiles of a tiled JPEG TIFF.

Usage: python3 benches/baseline/pillow_tile_decode.py SLIDE [TILES]

Reads TILES (default 1000) seeded-random level-0 tiles of SLIDE straight from the
file (TileOffsets/TileByteCounts of the first IFD, JPEGTables spliced in when present), then
times, per tile and median of 3 passes:
  - header only  (Image.open: Python and header parsing, the overhead in the other two),
  - full decode  (entropy decoding, IDCT, upsampling, colour conversion),
  - 1/8 scale    (Image.draft: libjpeg-turbo still entropy-decodes every block but runs only
                  the DC part of the IDCT, so this is close to the entropy decoder's own cost).
BENCHMARKS.md uses it to bound what any libjpeg-turbo-class decoder can do for random regions.
Needs Pillow (pip install pillow); nothing here is used by the tests.
"""
import io
import random
import statistics
import struct
import sys
import time

from PIL import Image, features

TYPES = {1: "B", 2: "c", 3: "H", 4: "I", 5: "Q", 7: "B", 12: "d", 16: "Q"}


def first_ifd(f):
    head = f.read(16)
    if head[:2] != b"II":
        sys.exit("only little-endian TIFF is handled")
    big = struct.unpack("<H", head[2:4])[0] == 43
    f.seek(8 if big else 4)
    ifd = struct.unpack("<Q" if big else "<I", f.read(8 if big else 4))[0]
    f.seek(ifd)
    n = struct.unpack("<Q" if big else "<H", f.read(8 if big else 2))[0]
    size = 20 if big else 12
    entries = f.read(n * size)
    tags = {}
    for i in range(n):
        e = entries[i * size:(i + 1) * size]
        if big:
            tag, typ, count = struct.unpack("<HHQ", e[:12])
            inline = e[12:]
        else:
            tag, typ, count = struct.unpack("<HHI", e[:8])
            inline = e[8:]
        if typ not in TYPES:
            continue
        width = struct.calcsize("<" + TYPES[typ]) * count
        if width > len(inline):
            f.seek(struct.unpack("<Q" if big else "<I", inline)[0])
            raw = f.read(width)
        else:
            raw = inline[:width]
        tags[tag] = (typ, count, raw)
    return tags


def values(tags, tag):
    typ, count, raw = tags[tag]
    return struct.unpack("<%d%s" % (count, TYPES[typ]), raw)


def per_tile(tiles, work):
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        for t in tiles:
            work(t)
        runs.append((time.perf_counter() - t0) / len(tiles) * 1e6)
    return statistics.median(runs)


def main():
    path = sys.argv[1]
    want = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    with open(path, "rb") as f:
        tags = first_ifd(f)
        if values(tags, 259)[0] != 7:
            sys.exit("level 0 is not JPEG-compressed")
        offsets, counts = values(tags, 324), values(tags, 325)
        tables = tags[347][2] if 347 in tags else None
        tiles = []
        for i in random.Random(42).sample(range(len(offsets)), min(want, len(offsets))):
            f.seek(offsets[i])
            data = f.read(counts[i])
            tiles.append(tables[:-2] + data[2:] if tables else data)

    def header(t):
        Image.open(io.BytesIO(t))

    def full(t):
        Image.open(io.BytesIO(t)).load()

    def eighth(t):
        im = Image.open(io.BytesIO(t))
        im.draft("RGB", (im.width // 8, im.height // 8))
        im.load()

    print(f"{len(tiles)} tiles of {path}, mean {sum(map(len, tiles)) / len(tiles):.0f} bytes; "
          f"Pillow {Image.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}")
    h = per_tile(tiles, header)
    for name, work in [("header only", header), ("full decode", full), ("1/8 scale", eighth)]:
        us = h if work is header else per_tile(tiles, work)
        extra = "" if work is header else f"  ({us - h:.0f} µs without the header overhead)"
        print(f"{name:12} {us:7.0f} µs/tile{extra}")


if __name__ == "__main__":
    main()
