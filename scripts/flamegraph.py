#!/usr/bin/env python3
"""Turns `perf script` output into an SVG flame graph (no dependency beyond Python).

    perf record -F 999 -g -p PID -o perf.data -- sleep 10
    perf script -i perf.data | swift demangle --simplified | scripts/flamegraph.py --title "…" > graph.svg

Each sample's call stack becomes one path from the root (bottom) to the sampled function
(top); a box's width is the share of samples that passed through it. Boxes carry a tooltip
(`<title>`) with the full name, the sample count and the percentage. Frames of one thread
pool are grouped under the thread's name (`NIO-ELT-0-#1` → `NIO-ELT`), so the event loops
and the cooperative pool each get one tower.
"""
import argparse
import html
import re
import sys
from collections import defaultdict

WIDTH = 1600
ROW = 16
FONT = 11
MIN_WIDTH = 1.0  # px: narrower boxes are left out (they could not be seen)


def thread_group(comm):
    comm = re.sub(r"-?#?\d+$", "", comm)
    comm = re.sub(r"-\d+(-|$)", r"\1", comm)
    return comm.rstrip("-") or "thread"


def short(symbol):
    symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol)
    if symbol == "[unknown]":
        return symbol
    # Swift's simplified demangling still carries long generic arguments: keep the head.
    symbol = re.sub(r"<[^<>]*(<[^<>]*>[^<>]*)*>", "<…>", symbol)
    return symbol


def parse(lines):
    stacks = defaultdict(int)
    header = None
    frames = []

    def flush():
        if header is not None:
            path = [thread_group(header)] + [short(f) for f in reversed(frames)]
            stacks[tuple(path)] += 1

    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            flush()
            header, frames = None, []
            continue
        if not line[0].isspace():
            flush()
            header, frames = line.split()[0], []
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        symbol = parts[1]
        symbol = re.sub(r"\s+\([^()]*\)$", "", symbol)  # the (dso) suffix
        frames.append(symbol)
    flush()
    return stacks


def tree(stacks):
    root = {"name": "all", "count": 0, "children": {}}
    for path, count in stacks.items():
        root["count"] += count
        node = root
        for name in path:
            child = node["children"].setdefault(name, {"name": name, "count": 0, "children": {}})
            child["count"] += count
            node = child
    return root


def colour(name):
    h = 0
    for ch in name:
        h = (h * 31 + ord(ch)) & 0xFFFFFFFF
    if "[k]" in name or name.startswith(("__x64", "do_", "tcp_", "ip_", "sys_", "entry_", "__sys", "ep_", "futex")):
        return f"rgb({200 + h % 40},{120 + h % 60},{60 + h % 30})"  # kernel: orange
    if "ssl" in name.lower() or "SSL" in name or "boringssl" in name.lower() or "aes" in name.lower():
        return f"rgb({80 + h % 40},{150 + h % 50},{200 + h % 40})"  # TLS: blue
    return f"rgb({225 + h % 30},{100 + h % 100},{40 + h % 40})"


def render(root, title, subtitle):
    total = root["count"] or 1
    depth = 0
    boxes = []

    def walk(node, x, level):
        nonlocal depth
        width = node["count"] / total * WIDTH
        if width < MIN_WIDTH:
            return
        depth = max(depth, level)
        boxes.append((x, level, width, node))
        child_x = x
        for child in sorted(node["children"].values(), key=lambda n: n["name"]):
            walk(child, child_x, level + 1)
            child_x += child["count"] / total * WIDTH

    walk(root, 0, 0)
    height = (depth + 1) * ROW + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH + 20}" height="{height}" font-family="monospace" font-size="{FONT}">',
           f'<rect width="100%" height="100%" fill="#fdfdf6"/>',
           f'<text x="10" y="18" font-size="14">{html.escape(title)}</text>',
           f'<text x="10" y="34" fill="#555">{html.escape(subtitle)} — {total} samples; hover a box for its share</text>']
    for x, level, width, node in boxes:
        y = height - (level + 1) * ROW - 4
        share = node["count"] / total * 100
        name = node["name"]
        label = ""
        chars = int((width - 4) / (FONT * 0.6))
        if chars >= 3:
            label = name if len(name) <= chars else name[: chars - 1] + "…"
        out.append(f'<g><title>{html.escape(name)} ({node["count"]} samples, {share:.2f}%)</title>'
                   f'<rect x="{x + 10:.1f}" y="{y}" width="{max(width - 0.5, 0.1):.1f}" height="{ROW - 1}" fill="{colour(name)}"/>'
                   + (f'<text x="{x + 12:.1f}" y="{y + ROW - 4}">{html.escape(label)}</text>' if label else "") + "</g>")
    out.append("</svg>")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--title", default="Flame graph")
    parser.add_argument("--subtitle", default="")
    parser.add_argument("--folded", help="also write the folded stacks (one line per stack) to this file")
    args = parser.parse_args()
    stacks = parse(sys.stdin)
    if not stacks:
        sys.exit("flamegraph.py: no samples in the input (is it `perf script` output of a -g recording?)")
    if args.folded:
        with open(args.folded, "w") as folded:
            for path, count in sorted(stacks.items(), key=lambda kv: -kv[1]):
                folded.write(";".join(path) + f" {count}\n")
    print(render(tree(stacks), args.title, args.subtitle))


if __name__ == "__main__":
    main()
