#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle.

Crates already forbid cycles between them; inside a crate Rust allows any module to use any
other, so this check keeps the layers of docs/architecture.md pointing one way. For every
`src/` tree given (default: every crate of the workspace) it reads each module file, collects
the `crate::…` and `super::…` paths it names (in `use` lines, `{…}` groups and inline paths,
comments and doc comments skipped), maps each to the deepest module file that exists, and
draws an edge between the two modules. A module and its own ancestors or descendants are one
unit (a parent declares its children; a child uses its parent's types), so edges between them
do not count. Any strongly connected group of two or more modules is printed, with the lines
that make each edge, and the script exits 1.

For the engine crate it also checks the direction of docs/architecture.md: every top-level
module has a layer below, and no module imports one of a higher layer (a new module must be
given its layer here, which is the moment to decide where it belongs).

Usage: python3 .ci/module-cycles.py [CRATE_SRC_DIR ...]
       python3 .ci/module-cycles.py --self-test   (shows that a circle and an upward import fail)
"""

import os
import re
import sys


# Layers of the engine's top-level modules, lowest first: a module may import its own layer's
# modules and lower ones, never higher ones. The slide layer's modules, re-exported by the
# engine (`crate::slide`, `crate::geom`, ...), are another crate and so below all of these.
ENGINE_LAYERS = [
    ["error", "lockfile", "imaging"],
    ["gpu", "model"],
    ["tissue", "grid", "batch", "stitch", "dense", "qc"],
    ["results"],
    ["output"],
    ["report"],
    ["pipeline"],
    ["cohort"],
]
LAYERS = {"engine": ENGINE_LAYERS}


def modules(src):
    """Maps module paths (tuples) to their files, for one crate's src/ folder."""
    found = {}
    for root, _dirs, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            if rel and rel[0] == "bin":
                continue
            found[tuple(rel)] = path
    return found


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def expand(text, i):
    """Parses a path tree starting at text[i] (after `crate::`); returns (paths, end)."""
    paths = []
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] == "{":
        i += 1
        while i < len(text) and text[i] != "}":
            sub, i = expand(text, i)
            paths.extend(sub)
            while i < len(text) and text[i] in ", \n\t":
                i += 1
        return paths, i + 1
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
    if not m:
        return [()], i
    name = m.group(0)
    i += len(name)
    if text.startswith("::", i):
        subs, i = expand(text, i + 2)
        return [(name,) + s for s in subs], i
    return [(name,)], i


def references(module, text):
    """Every module path (absolute, as a tuple) named in a file's code."""
    refs = []
    for m in re.finditer(r"\b(crate|super)::", text):
        base = () if m.group(1) == "crate" else module[:-1]
        # `super::super::x`
        j = m.end()
        while text.startswith("super::", j):
            base = base[:-1]
            j += len("super::")
        subs, _ = expand(text, j)
        for s in subs:
            refs.append((base + s, text.count("\n", 0, m.start()) + 1))
    return refs


def deepest(path, known):
    for n in range(len(path), 0, -1):
        if path[:n] in known:
            return path[:n]
    return None


def related(a, b):
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check(src):
    known = modules(src)
    graph, why = {}, {}
    for mod, path in known.items():
        with open(path, encoding="utf-8") as f:
            text = strip_comments(f.read())
        # Test modules may reach anywhere in the crate.
        text = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests", text)[0]
        for ref, line in references(mod, text):
            target = deepest(ref, known)
            if target is None or related(mod, target):
                continue
            graph.setdefault(mod, set()).add(target)
            why.setdefault((mod, target), f"{path}:{line}")
        graph.setdefault(mod, set())
    bad = [c for c in sccs(graph) if len(c) > 1]
    ok = True
    crate = os.path.basename(os.path.dirname(os.path.abspath(src)))
    layers = LAYERS.get(crate)
    if layers:
        rank = {m: i for i, names in enumerate(layers) for m in names}
        tops = {m[0] for m in known if m}
        for m in sorted(tops - set(rank)):
            print(f"{src}: module {m} has no layer in .ci/module-cycles.py (ENGINE_LAYERS)")
            ok = False
        for a, targets in sorted(graph.items()):
            for b in sorted(targets):
                if a and b and a[0] in rank and b[0] in rank and rank[b[0]] > rank[a[0]]:
                    print(
                        f"{src}: upward import {'::'.join(a)} -> {'::'.join(b)} "
                        f"({why[(a, b)]})"
                    )
                    ok = False
    for comp in bad:
        names = ", ".join("::".join(m) or "crate" for m in comp)
        print(f"{src}: import circle among {names}")
        members = set(comp)
        for a in comp:
            for b in sorted(graph[a] & members):
                print(f"    {'::'.join(a)} -> {'::'.join(b)}  ({why[(a, b)]})")
    return ok and not bad


def self_test():
    """A crate with a circle and an engine with an upward import must both fail; a clean one
    must pass."""
    import contextlib
    import io
    import tempfile

    def crate(files, name="demo"):
        root = tempfile.mkdtemp()
        src = os.path.join(root, name, "src")
        for path, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(src, path)), exist_ok=True)
            with open(os.path.join(src, path), "w", encoding="utf-8") as f:
                f.write(text)
        return src

    def quiet(src):
        with contextlib.redirect_stdout(io.StringIO()):
            return check(src)

    circle = crate({"lib.rs": "mod a; mod b;", "a.rs": "use crate::b::X;",
                    "b/mod.rs": "use crate::{a::Y, c};", "c.rs": ""})
    upward = crate({"lib.rs": "", "imaging/mod.rs": "use crate::pipeline::run;",
                    "pipeline.rs": "// crate::imaging in a comment, not an import"},
                   name="engine")
    clean = crate({"lib.rs": "", "a.rs": "use super::b; // crate::a", "b.rs": "",
                   "a/inner.rs": "use crate::a::Z; use super::super::b;"})
    assert not quiet(circle), "a circle was not found"
    assert not quiet(upward), "an upward import was not found"
    assert quiet(clean), "a clean crate failed"
    print("self-test passed: a circle and an upward import fail, a clean crate passes")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    dirs = sys.argv[1:] or [os.path.join(root, "src")] + sorted(
        os.path.join(root, "crates", c, "src")
        for c in os.listdir(os.path.join(root, "crates"))
        if os.path.isdir(os.path.join(root, "crates", c, "src"))
    )
    ok = all([check(d) for d in dirs])
    if ok:
        print(f"no import circles in {len(dirs)} crates, and no upward import in the engine")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
