#!/usr/bin/env python3
"""The report of scripts/bench: medians of its raw results, as Markdown and as an SVG chart.

    bench_report.py RESULTS PAGE.md CHART.svg    write the page and the chart
    bench_report.py --tables RESULTS             print the tables only

RESULTS holds one fact a line (see scripts/bench): time, step, size, squashfs, boot, upload
and info lines.
"""
import math
import os
import statistics
import sys
from collections import defaultdict

BUILD_ROWS = [
    ("planet-image-raw", "planet-image → raw (nobody)"),
    ("planet-image-raw-cold", "planet-image → raw, host not cached (`--no-host-cache`)"),
    ("planet-image-rebuild", "planet-image → raw, rebuild after one file changed"),
    ("planet-image-qcow2", "planet-image → qcow2 (nobody)"),
    ("planet-image-raw-none", "planet-image → raw, `--compression none`"),
    ("hand-raw", "hand pipeline → raw (root)"),
    ("hand-qcow2", "hand pipeline → qcow2 (root)"),
    ("systemd-repart", "systemd-repart → raw (root)"),
    ("planet-image-squashfs", "planet-image's squashfs step (its log)"),
    ("tar2sqfs", "tar2sqfs alone (squashfs only)"),
    ("zstd-T0", "floor: `zstd -T0` of the tar, same level"),
    ("copy", "floor: copy of planet-image's raw"),
]
# The "planet-image-squashfs" row: the squashfs stage of the raw row's runs, as the bench's
# pi_steps records it from planet-image's log.
SQUASHFS_STEP = "planet-image-raw:rootfs_→_squashfs"


def load(path):
    r = {"time": defaultdict(list), "step": defaultdict(list), "size": {}, "squashfs": {},
         "boot": defaultdict(list), "upload": defaultdict(list), "update": {}, "info": {}, "version": {}}
    for line in open(path):
        f = line.split()
        if not f:
            continue
        kind = f[0]
        if kind == "time" and len(f) == 7:
            r["time"][(f[1], f[2])].append((float(f[3]), float(f[4]) + float(f[5]), int(f[6]) / 1024))
        elif kind == "step":
            r["step"][(f[1], f[2])].append(float(f[3]))
        elif kind == "size":
            r["size"][(f[1], f[2])] = (int(f[3]), int(f[4]))
        elif kind == "squashfs":
            r["squashfs"][(f[1], f[2])] = (int(f[3]), f[4])
        elif kind == "boot":
            r["boot"][f[1]].append(tuple(None if x == "-" else float(x) for x in f[2:5]))
            if len(f) > 5:
                r["info"]["accel"] = f[5]
        elif kind == "upload":
            r["upload"][f[1]].append((float(f[2]), float(f[3]), int(f[4]), int(f[5]), int(f[6]), int(f[7])))
        elif kind == "update":
            r["update"][f[1]] = tuple(int(x) for x in f[2:6]) + tuple(float(x) for x in f[6:8])
        elif kind == "info" and len(f) >= 2:
            if f[1] == "version":
                r["version"][f[2]] = " ".join(f[3:])
            else:
                r["info"][f[1]] = " ".join(f[2:])
    return r


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def mib(b):
    return "%.0f MiB" % (b / 1048576) if b >= 10 * 1048576 else "%.1f MiB" % (b / 1048576)


def ratio(x, base):
    if x is None or not base:
        return "–"
    return "%.2f×" % (x / base) if x / base >= 0.1 else "%.3f×" % (x / base)


# The corpora measured with every row; the others run a few rows only, and list those.
EVERY_ROW = ("planet-like@3", "demo@15")


def build_table(r, corpus):
    """Rows of (key, label, wall, cpu, rss) for a corpus, and the Markdown."""
    base = med(w for w, _, _ in r["time"].get((corpus, "planet-image-raw"), []))
    out = []
    out.append("| tool and output | wall s | CPU s | peak RSS MiB | wall vs planet-image raw | output (allocated) | slot squashfs |")
    out.append("|---|---:|---:|---:|---:|---:|---|")
    bars = []
    for key, label in BUILD_ROWS:
        if key == "planet-image-squashfs":
            w = med(r["step"].get((corpus, SQUASHFS_STEP), []))
            if w is None:
                continue
            out.append("| %s | %.2f | – | – | %s | – | – |" % (label, w, ratio(w, base)))
            bars.append((label, w / base if base else None))
            continue
        runs = r["time"].get((corpus, key))
        if not runs:
            if corpus in EVERY_ROW:
                out.append("| %s | not run | | | | | |" % label)
            continue
        w = med(x[0] for x in runs)
        c = med(x[1] for x in runs)
        m = med(x[2] for x in runs)
        size = r["size"].get((corpus, key))
        sq = r["squashfs"].get((corpus, key))
        sizetext = mib(size[1]) if size else "–"
        if key == "copy":
            sizetext = "(same bytes)"
        sqtext = "%s, %s" % (sq[1], mib(sq[0])) if sq else ("zstd, %s" % mib(size[0]) if key == "tar2sqfs" and size else "–")
        out.append("| %s | %.2f | %.2f | %.0f | %s | %s | %s |" % (label, w, c, m, ratio(w, base), sizetext, sqtext))
        bars.append((label, w / base if base else None))
    return out, bars


# planet-image's rows whose runs record every stage of its log ("step CORPUS ROW:STAGE S").
STAGE_ROWS = [("planet-image-raw", "host cache warm"), ("planet-image-raw-cold", "host not cached"),
              ("planet-image-rebuild", "rebuild, one file changed")]


def stages_table(r, corpus):
    """Where planet-image's wall time goes on one corpus: each stage its log timed, median of
    the runs, for each planet-image row that recorded them; [] when none did."""
    rows = [(k, l) for k, l in STAGE_ROWS if any(c == corpus and key.startswith(k + ":") for c, key in r["step"])]
    if not rows:
        return []
    stages = []
    for c, key in r["step"]:
        stage = key.split(":", 1)[1] if ":" in key else None
        if c == corpus and stage and stage not in stages:
            stages.append(stage)
    out = ["| stage (planet-image's log) | " + " | ".join("%s, s" % l for _, l in rows) + " |",
           "|---|" + "---:|" * len(rows)]
    for stage in stages:
        cells = [med(r["step"].get((corpus, "%s:%s" % (k, stage)), [])) for k, _ in rows]
        out.append("| %s | %s |" % (stage.replace("_", " "), " | ".join("–" if v is None else "%.1f" % v for v in cells)))
    walls = [med(x[0] for x in r["time"].get((corpus, k), [])) for k, _ in rows]
    out.append("| **whole run (wall)** | %s |" % " | ".join("–" if v is None else "**%.2f**" % v for v in walls))
    return out


def spread(xs):
    """median (min–max) of the values, or "–"."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return "%.2f (%.2f–%.2f)" % (med(xs), min(xs), max(xs))


def goals_table(r):
    """The build-speed goals (issue 17): each ratio with the walls it is made of."""
    def walls(corpus, row):
        if row == "planet-image-squashfs":
            return r["step"].get((corpus, SQUASHFS_STEP), [])
        return [x[0] for x in r["time"].get((corpus, row), [])]

    out = ["| goal | measured ratio | met | numerator s, median (min–max) | denominator s, median (min–max) |",
           "|---|---:|:---:|---|---|"]
    goals = [
        ("Planet-like zstd:3: planet-image raw ≤ 1.5× `zstd -T0`", "planet-like@3", "planet-image-raw", "zstd-T0", lambda q: q <= 1.5),
        ("Planet-like zstd:3: hand pipeline ≥ 4× planet-image", "planet-like@3", "hand-raw", "planet-image-raw", lambda q: q >= 4),
        ("Planet-like zstd:15: planet-image raw ≤ 1.05× tar2sqfs alone", "planet-like@15", "planet-image-raw", "tar2sqfs", lambda q: q <= 1.05),
        ("demo zstd:15: planet-image faster than the hand pipeline", "demo@15", "hand-raw", "planet-image-raw", lambda q: q > 1),
        ("demo zstd:15: planet-image faster than systemd-repart", "demo@15", "systemd-repart", "planet-image-raw", lambda q: q > 1),
        ("Planet-like zstd:3: rebuild after one file ≤ 0.5× a cold build", "planet-like@3", "planet-image-rebuild", "planet-image-raw-cold", lambda q: q <= 0.5),
    ]
    for label, corpus, num, den, ok in goals:
        a, b = walls(corpus, num), walls(corpus, den)
        if not a or not b:
            out.append("| %s | not run | | | |" % label)
            continue
        q = med(a) / med(b)
        out.append("| %s | %.2f× | %s | %s | %s |" % (label, q, "yes" if ok(q) else "**no**", spread(a), spread(b)))
    rss = [x[2] for (c, row), runs in r["time"].items() if row.startswith("planet-image") for x in runs]
    if rss:
        out.append("| peak RSS of every planet-image build < 300 MiB | %.0f MiB (largest) | %s | | |" % (
            max(rss), "yes" if max(rss) < 300 else "**no**"))
    return out


def size_table(r, corpora):
    out = ["| image | " + " | ".join("%s" % c.replace("@", " zstd:") for c in corpora) + " |", "|---|" + "---:|" * len(corpora)]
    rows = [
        ("input", "rootfs tar", 0),
        ("zstd-T0", "tar, `zstd` at the same level", 0),
        ("tar2sqfs", "tar2sqfs squashfs", 0),
        ("planet-image-raw", "planet-image raw, apparent (disk size)", 0),
        ("planet-image-raw", "planet-image raw, allocated", 1),
        ("planet-image-qcow2", "planet-image qcow2", 0),
        ("planet-image-raw-none", "planet-image raw `none`, allocated", 1),
        ("hand-raw", "hand pipeline raw, allocated", 1),
        ("hand-qcow2", "hand pipeline qcow2", 0),
        ("systemd-repart", "systemd-repart raw, allocated", 1),
    ]
    for key, label, idx in rows:
        cells = []
        for c in corpora:
            s = r["size"].get((c, key))
            tar = r["size"].get((c, "input"))
            if not s:
                cells.append("–")
            elif key == "input" or not tar:
                cells.append(mib(s[idx]))
            else:
                cells.append("%s (%.2f× tar)" % (mib(s[idx]), s[idx] / tar[0]))
        out.append("| %s | %s |" % (label, " | ".join(cells)))
    return out


def scaling_table(r):
    out = ["| input | tar | wall s | CPU s | peak RSS MiB | tar MiB/s | squashfs step s | raw allocated |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = None
    for n in (1, 2, 4):
        c = "scale-%dx" % n if n > 1 else "planet-like@3"
        runs = r["time"].get((c, "planet-image-raw"))
        tar = r["size"].get((c, "input"))
        if not runs or not tar:
            continue
        w = med(x[0] for x in runs)
        base = base or w
        step = med(r["step"].get((c, SQUASHFS_STEP), []))
        raw = r["size"].get((c, "planet-image-raw"))
        out.append("| Planet-like %d× | %s | %.2f (%s) | %.2f | %.0f | %.1f | %s | %s |" % (
            n, mib(tar[0]), w, ratio(w, base), med(x[1] for x in runs), med(x[2] for x in runs),
            tar[0] / 1048576 / w, "%.2f" % step if step else "–", mib(raw[1]) if raw else "–"))
    return out


def boot_table(r):
    pi = r["boot"].get("planet-image", [])
    fl = r["boot"].get("floor", [])
    floor = med(x[0] for x in fl)
    out = ["| boot (QEMU TCG, OVMF, systemd-boot, same kernel) | median s | min s | max s | vs floor |",
           "|---|---:|---:|---:|---:|"]
    bars = []

    def row(label, xs):
        xs = [x for x in xs if x is not None]
        if not xs:
            out.append("| %s | not reached | | | |" % label)
            return None
        m = med(xs)
        out.append("| %s | %.2f | %.2f | %.2f | %s |" % (label, m, min(xs), max(xs), ratio(m, floor)))
        return m

    f = row("floor: initramfs prints a line (then powers off)", [x[0] for x in fl])
    row("floor: … QEMU exited after power-off", [x[2] for x in fl])
    a = row("planet-image demo: `planet-init: launcher started`", [x[0] for x in pi])
    b = row("planet-image demo: etcd `/health` answers", [x[1] for x in pi])
    if f:
        bars = [("boot: floor (line printed)", 1.0)]
        if a:
            bars.append(("boot: launcher started", a / f))
        if b:
            bars.append(("boot: etcd answering", b / f))
    return out, bars


def upload_table(r):
    labels = [("planet-image", "planet-image `publish aws` (upload + wait + RegisterImage)"),
              ("coldsnap", "coldsnap `upload` (default: every block, zeros too)"),
              ("coldsnap-omit-zero-blocks", "coldsnap `upload --omit-zero-blocks`")]
    base = med(x[0] for x in r["upload"].get("planet-image", []))
    base_span = med(x[1] for x in r["upload"].get("planet-image", []))
    out = ["| uploader | wall s | vs planet-image | EBS upload span s | requests | of which PutSnapshotBlock | bytes sent | errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    bars = []
    for key, label in labels:
        xs = r["upload"].get(key)
        if not xs:
            out.append("| %s | not run | | | | | | |" % label)
            continue
        w, span = med(x[0] for x in xs), med(x[1] for x in xs)
        req, sent, blocks, errs = med(x[2] for x in xs), med(x[3] for x in xs), med(x[4] for x in xs), max(x[5] for x in xs)
        out.append("| %s | %.2f | %s | %.2f (%s) | %d | %d | %s | %d |" % (
            label, w, ratio(w, base), span, ratio(span, base_span), req, blocks, mib(sent), errs))
        bars.append(("upload: " + key, w / base if base else None))
    return out, bars


UPDATE_BEGIN = "<!-- update sizes: begin -->"
UPDATE_END = "<!-- update sizes: end -->"


def update_section(r):
    """The update-size section, between markers that `--splice-update` finds again."""
    u, info = r["update"], r["info"]
    if not u:
        return []
    mbit = info.get("update_mbit", "?")
    p = [UPDATE_BEGIN, "## Update size: what a machine on release N downloads to reach N+1", ""]
    p.append("N+1 is the real Planet release (`scripts/make-planet-release`: Debian bookworm, Kubernetes built "
             "from source, planet-node) with the WordPress app (`scripts/make-wordpress-app`), bundled by "
             "`planet-image bundle` (zstd:15, chunked). Each N differs from it in one thing. "
             "`planet-image pull URL --from N.planet` makes N+1 from the chunks N holds and fetches the rest by "
             "range from a server on 127.0.0.1 (`scripts/lib/bench_ranges.py`) limited to %s Mbit/s, as planet-init "
             "does on a machine running N; the whole bundle is `curl` from the same server. Every pulled file was "
             "compared with N+1 (`cmp`). One run each%s." % (
                 mbit, " (update section: %s s)" % info["update_seconds"] if "update_seconds" in info else ""))
    p.append("")
    p.append("| N → N+1 changes | bundle | downloaded | of the bundle | `--estimate-from` said | server sent | pull wall s | whole bundle wall s |")
    p.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    labels = [("deb", "(a) one Debian package: " + info.get("update_deb", "?")),
              ("k8s", "(b) " + info.get("update_k8s", "?")),
              ("app", "(c) one app image: " + info.get("update_app", "?"))]
    for key, label in labels:
        if key not in u:
            continue
        full, fetched, sent, estimate, wall, full_wall = u[key]
        p.append("| %s | %s | %s | **%.2f %%** | %s | %s | %.1f | %.1f |" % (
            label, mib(full), mib(fetched), 100.0 * fetched / full, mib(estimate), mib(sent), wall, full_wall))
    p.append("")
    p.append("Goal for (a): under 5 % of the bundle. \"downloaded\" is what `pull` fetched (the bundle's "
             "start, its chunk indexes, the missing chunks; 4 KiB more than the estimate, the first look at "
             "the prelude); \"server sent\" is the server's own count.")
    p.append("")
    p.append("Why (b) and (c) cost more: (b) every Kubernetes binary carries its version, and Go links code and "
             "data anew around a changed string or function, so most of the six binaries comes again (they are "
             "414 MiB, 92 MiB as one `zstd -15` stream, measured once by hand); that is what a Kubernetes "
             "patch release costs any image updater. "
             "(c) an image is one file in the slot (the docker archive, 315 MiB for WordPress): squashfs "
             "compresses each file in fixed 128 KiB blocks, so the bytes that follow a changed package "
             "inside the archive shift against the block grid and every later block of that file "
             "changes, while the other files, the mariadb image among them, are reused whole.")
    p.append(UPDATE_END)
    return p


def splice_update(results, doc):
    """Replaces the update section of DOC (or appends it) with the one RESULTS makes."""
    section = update_section(load(results))
    if not section:
        sys.exit("%s holds no update results" % results)
    text = open(doc).read() if os.path.exists(doc) else ""
    if UPDATE_BEGIN in text and UPDATE_END in text:
        head, rest = text.split(UPDATE_BEGIN, 1)
        tail = rest.split(UPDATE_END, 1)[1]
        text = head + "\n".join(section) + tail
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    with open(doc + ".tmp", "w") as f:
        f.write(text)
    os.replace(doc + ".tmp", doc)


def svg(bars, title, subtitle):
    """Horizontal bars of ratios (log scale, 1× = planet-image or the boot floor)."""
    bars = [(l, v) for l, v in bars if v]
    lo, hi = 0.01, 10.0
    width, left, right, row_h, top = 900, 330, 70, 22, 70
    plot = width - left - right
    height = top + row_h * len(bars) + 50

    def x(v):
        v = min(max(v, lo), hi)
        return left + plot * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "")
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">' % (width, height, width, height),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="10" y="22" font-size="15" font-weight="bold">%s</text>' % esc(title),
         '<text x="10" y="42" fill="#555">%s</text>' % esc(subtitle)]
    for t in (0.01, 0.1, 1, 10):
        o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>' % (x(t), top - 8, x(t), height - 40, "#333" if t == 1 else "#ddd"))
        o.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%g×</text>' % (x(t), height - 25, t))
    section_color = {"build": "#4e79a7", "boot": "#f28e2b", "upload": "#59a14f"}
    for i, (label, v) in enumerate(bars):
        y = top + i * row_h
        kind = "boot" if label.startswith("boot") else "upload" if label.startswith("upload") else "build"
        o.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (left - 8, y + 14, esc(label)))
        x0, x1 = x(lo), x(v)
        o.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>' % (x0, y + 3, max(x1 - x0, 1), row_h - 6, section_color[kind]))
        o.append('<text x="%.1f" y="%d" fill="#222">%s</text>' % (x1 + 4, y + 14, "%.2f×" % v if v >= 0.1 else "%.3f×" % v))
    o.append('<text x="%d" y="%d" fill="#555">log scale; build and upload: wall time ÷ planet-image\'s; boot: ÷ the floor boot</text>' % (left, height - 8))
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main():
    if sys.argv[1] == "--splice-update":
        splice_update(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1] == "--tables":
        r = load(sys.argv[2])
        if not r["time"] and r["update"]:
            print("\n".join(l for l in update_section(r) if not l.startswith("<!--")))
            return
        page, _ = render(r)
        print("\n".join(l for l in page if not l.startswith("<!--")))
        return
    r = load(sys.argv[1])
    page, bars = render(r)
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(page) + "\n")
    info = r["info"]
    with open(sys.argv[3], "w") as f:
        f.write(svg(bars, "planet-image benchmarks (%s)" % info.get("date", "?"),
                    "Planet-like rootfs build, demo boot, %s GiB AMI upload; %s" % (info.get("upload_gib", "?"), info.get("machine", ""))))


def render(r):
    info, v = r["info"], r["version"]
    p = []
    p.append("# Benchmarks")
    p.append("")
    p.append("<!-- Written by scripts/bench (scripts/lib/bench_report.py) from its last run; do not edit by hand. -->")
    p.append("")
    total = int(info.get("total_seconds", "0"))
    p.append("Last run: %s, on %s (%s; QEMU accelerator: %s). `scripts/bench` took %d min %02d s "
             "(build %s s, real release %s s, scaling %s s, boot %s s, upload %s s, update sizes %s s; the rest is installing, "
             "compiling and corpus making)." % (
                 info.get("date", "?"), info.get("machine", "?"), info.get("cpu", "?"), info.get("accel", "?"),
                 total // 60, total % 60, info.get("build_seconds", "?"), info.get("release_seconds", "?"),
                 info.get("scale_seconds", "?"), info.get("boot_seconds", "?"), info.get("upload_seconds", "?"),
                 info.get("update_seconds", "?")))
    p.append("")
    p.append("Versions: " + "; ".join("%s %s" % (k, v[k]) for k in sorted(v)) + ".")
    p.append("")
    p.append("Medians of %s build runs, %s boots, %s uploads (%s run%s per scaling point). "
             "Every number below is a run of the named tool on the same input on this machine." % (
                 info.get("runs"), info.get("boots"), info.get("uploads"), info.get("scale_runs"),
                 "" if info.get("scale_runs") == "1" else "s"))
    p.append("")
    p.append("![ratios to planet-image](benchmarks.svg)")
    p.append("")
    p.append("## Build-speed goals")
    p.append("")
    p.append("Each ratio is of the medians; the spread is the fastest and slowest run of each side.")
    p.append("")
    p.extend(goals_table(r))
    p.append("")
    bars = []
    sections = [("planet-like@3", "Planet-like rootfs, zstd level 3, every row", info.get("runs")),
                ("planet-like@15", "Planet-like rootfs, zstd level 15 (the peers' default and planet-image's)", info.get("runs15")),
                ("demo@15", "demo rootfs, zstd level 15", info.get("runs")),
                ("release@3", "the real Planet release (%s), zstd level 3" % info.get("release", "?"), info.get("runs"))]
    # A run without the release section (--only) leaves its table out rather than empty.
    sections = [s for s in sections if s[0] != "release@3" or (s[0], "planet-image-raw") in r["time"]]
    for key, title, n in sections:
        tar = r["size"].get((key, "input"))
        p.append("## Build: %s (%s tar; median of %s)" % (title, mib(tar[0]) if tar else "?", n))
        p.append("")
        t, b = build_table(r, key)
        p.extend(t)
        p.append("")
        st = stages_table(r, key)
        if st:
            p.append("Where planet-image's time goes (its own log, 0.1 s resolution; the squashfs and the "
                     "kernel + initramfs stages run side by side, the others one after the other):")
            p.append("")
            p.extend(st)
            p.append("")
        if key == "planet-like@15":
            p.append("At level 15 only these rows run, %s time%s each (`--runs15`): level 15 compresses several "
                     "times slower than level 3, and three runs of every row at 15 would not fit the half hour "
                     "`scripts/bench` has on this machine." % (n, "" if n == "1" else "s"))
            p.append("")
        if key.startswith("planet-like"):
            lvl = key.split("@")[1]
            bars.extend(("zstd:%s build: %s" % (lvl, l.split(" (")[0].replace("`", "")), x) for l, x in b)
    p.append("## Size")
    p.append("")
    p.extend(size_table(r, [k for k, _, _ in sections]))
    p.append("")
    p.append("## Scaling: planet-image → raw (zstd:3), the Planet-like rootfs with `/usr` copied 1, 2 and 4 times")
    p.append("")
    p.extend(scaling_table(r))
    p.append("")
    p.append("## Boot: the demo image to its etcd")
    p.append("")
    t, b = boot_table(r)
    p.extend(t)
    bars.extend(b)
    p.append("")
    img = r["size"].get(("upload", "image"))
    p.append("## AMI upload: planet-image against coldsnap, to moto (EBS direct APIs)")
    p.append("")
    if img:
        p.append("The image: planet-image's raw build of the Planet-like rootfs on a %s disk (`truncate`, `sgdisk -e`), "
                 "%s of it allocated. A fresh `moto_server` per run, reached through a counting proxy "
                 "(`scripts/lib/bench_proxy.py`) on 127.0.0.1; requests and bytes are what the client sent." % (
                     mib(img[0]).replace("4096 MiB", "4 GiB"), mib(img[1])))
        p.append("")
    t, b = upload_table(r)
    p.extend(t)
    bars.extend(b)
    p.append("")
    update = update_section(r)
    if update:
        p.extend(update)
        p.append("")
    p.append(NOTES.rstrip("\n"))
    return p, bars


NOTES = """## What each row is

- **planet-image** runs as `nobody` (no root, no loop devices, no mounts): it streams the tar
  into `tar2sqfs` (zstd level 15, all cores; planet-image's default) while it takes the kernel
  and initramfs from its host cache (or, cold, reads the kernel package, computes the module set
  and compresses the initramfs), writes the FAT32 ESP with its own writer,
  an empty ext4 state and the GPT disk, and a manifest. `qcow2` writes the same disk as qcow2.
  `--compression none` makes the slot with `sqfstar -noI -noD -noF -noX` (squashfs-tools), since
  libsquashfs has no switch for storing blocks uncompressed.
- **host not cached** is planet-image with `--no-host-cache`: the kernel package read and the
  initramfs compressed again, as on the first build on a machine. The other planet-image rows
  use its host cache (kernel + initramfs, kept by the digest of their inputs and checked before
  use), which the corpus's first build filled. The bench checks the two images are the same
  bytes.
- **rebuild after one file changed** is planet-image on a copy of the tar where 16 bytes of
  one file under `/etc` differ: what a commit that touches one file costs.
- **hand pipeline** is what operators script today, as root: `tar -x` with owners and xattrs,
  `mksquashfs -comp zstd -Xcompression-level 15` on all cores, `mkfs.vfat -F 32` + `mcopy` of the
  ESP, `mkfs.ext4`, `sgdisk`, `dd` of each partition into place (and `qemu-img convert -O qcow2`).
  It is given the same partition offsets and sizes as planet-image's image of the same corpus and
  **reuses planet-image's ESP files** (kernel, initramfs, systemd-boot, loader entries): it does no
  kernel or initramfs work at all, as planet-image with its host cache warm.
- **systemd-repart** is Debian 12's (252), the engine under mkosi, from the extracted tree, as
  root: `Format=squashfs` + `CopyFiles=` for slot A, an empty slot B, `Format=ext4` for the state,
  the same sizes. Two things 252 cannot do here, so the row does them the nearest way: it
  populates a vfat ESP only by mounting it (this kernel has no vfat), so the ESP is a
  `mkfs.vfat` + `mcopy` image (of planet-image's ESP files) given as `CopyBlocks=`; and it runs
  `mksquashfs` with its defaults, so its slot is **gzip**, not zstd:15 (no compression setting
  before systemd 254; `Minimize=`, which would size the slot itself, came in 253). Its time
  includes `tar -x` and the ESP image.
- **tar2sqfs alone** is the squashfs-tools-ng step planet-image drives, run directly on the tar;
  **planet-image's squashfs step** is the same step timed by planet-image's own log (the tar is
  parsed, checked and re-streamed on the way).
- **Floors**: `zstd -T0 -15` over the tar is the compression work any compressed output needs
  at that level; the copy is `cp --sparse=always` of planet-image's raw output, the cost of just
  writing the image's bytes.
- **Size**: "allocated" is the blocks the sparse file really uses (`stat %b`); qcow2 files are
  not sparse.
- **The real Planet release**: the rootfs `scripts/make-planet-release` makes (Debian 12 with
  systemd, docker, etcd, the Kubernetes commands built from Debian's source package, planet-node),
  uncompressed as the other corpora are, at zstd level 3; planet-image's rows against the
  squashfs step alone and the compression floor of the same tar.
- **Scaling**: the Planet-like tar with its `/usr` copied to `/usr.copy1`… (2× and 4× the tar).
  squashfs deduplicates identical files, so the outputs barely grow while the input does: the
  time shows how reading, hashing and streaming grow with the input.
- **Boot**: `planet-image run IMAGE --snapshot` (QEMU, OVMF, 2 vCPUs, 1 GiB, TCG since there is
  no usable KVM), timed from starting the command to the serial console line and to etcd's
  `/health` answering through a host forward. The floor is an image built by planet-image
  with `--planet-init` set to a static binary that prints a line and powers off: the same
  firmware, systemd-boot and kernel, no Planet userspace.
- **AMI upload**: the same sparse raw image, a fresh moto each run. planet-image reads only the
  file's data extents (SEEK_DATA), skips all-zero blocks, uploads 512 KiB blocks, waits for the
  snapshot and registers the AMI (`publish aws` cannot stop after the snapshot, so its wall time
  includes DescribeRegions/DescribeImages/DescribeSnapshots/RegisterImage; the **EBS upload span**,
  from the StartSnapshot request to the CompleteSnapshot answer as the proxy saw them, is the
  comparable snapshot-only part). coldsnap `upload` (without `--wait`) only makes the snapshot;
  by default it uploads every block of the disk, zeros included; with `--omit-zero-blocks` it
  still reads every byte but sends only non-zero blocks. moto 5.2.1 answers StartSnapshot with
  `"BlockSize": 512` where EBS always says 524288; coldsnap cuts the file by that field (planet-image
  uses the documented 512 KiB), so the proxy corrects that one field in moto's answer — without
  it coldsnap sends 8 million 512-byte requests for 4 GiB (it had not finished after 10 minutes).

## Peers that could not run as asked, and why

- **systemd-repart 252** cannot populate a vfat ESP without mounting it (no vfat in this kernel:
  "Failed to mount … (type vfat): No such device"), has no `Minimize=` (253) and no way to choose
  the squashfs compressor (254); its row uses `CopyBlocks=` for the ESP, fixed slot sizes, and
  gzip, as described above.
- **KVM**: `/dev/kvm` exists but cannot run a guest here, so every boot is QEMU TCG (software
  emulation); boot times are much longer than on hardware with KVM, for the floor as well.
- **The raw mmdebstrap tree**: systemd puts POSIX ACLs on `/var/log/journal`, which squashfs
  cannot store. mksquashfs drops them with a warning and planet-image leaves them out with one
  note, but tar2sqfs alone refuses the tar ("squashfs does not support xattr prefix of
  system.posix_acl_default"). `scripts/make-planet-like-rootfs` removes the ACLs, so every tool
  gets the same tree.
- The machine is a shared VM, so single numbers are noisy; the medians and the min/max of the
  boots show how much.
"""

if __name__ == "__main__":
    main()
