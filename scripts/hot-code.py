#!/usr/bin/env python3
"""Regenerate crates/uiommufd-cli/hot-code.ld: the functions a dirty-bitmap
read runs through, laid out next to each other at the start of the
command's text (see the comment at the top of that file for why).

Needs valgrind. Run from the repository root after a release build:

    cargo build --release -p uiommufd-cli && scripts/hot-code.py

It records, with callgrind, which functions `bench --only 9 --quick` runs
inside `Vm::sync_dirty` (one read per tracker, as `migrate` makes them),
turns each symbol into a pattern without its hash (so that the script
survives edits of the code) and adds to those already there the patterns
that name at most MAX_MATCHES functions of the binary (a generic function
of the standard library, e.g. `Iterator::fold`, has dozens of instances
and would pull them all in). The test `tests/hot_code.rs` checks that every pattern still
names a function and that it landed in the section.
"""
import os
import re
import subprocess
import sys
import tempfile

EXE = "target/release/uiommufd"
OUT = "crates/uiommufd-cli/hot-code.ld"
# The runs, each with the functions whose execution is recorded (with
# everything they call), each made three times: whether a read finds dirty
# words (and so which functions it calls) depends on where the device was.
# (The stop path's code would belong here too, but `migrate` under
# valgrind runs its source ~50x slower than its peer expects and times
# out.)
RUNS = 3 * [
    (["bench", "--only", "9", "--quick"], ["*2vm2Vm10sync_dirty*"]),
]
# Not part of the read: what calls it (the benchmark, the program's
# start), which callgrind also names.
SKIP = ("5bench", "lang_start", "backtrace", "4main17h")
# Of the standard library's own (not generic) functions only the
# allocator's shims: the others (e.g. the hasher's `write`) exist in a
# release build and not in a debug one, where the test would not find them.
STD_KEEP = "___rustc"
MAX_MATCHES = 6


def executed(exe):
    fns = set()
    for args, roots in RUNS:
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "cg.out")
            cmd = ["valgrind", "--tool=callgrind", "--demangle=no",
                   "--collect-atstart=no",
                   f"--callgrind-out-file={out}"]
            cmd += [f"--toggle-collect={r}" for r in roots]
            env = dict(os.environ, UIOMMUFD_HUGE_TEXT="0")
            r = subprocess.run(cmd + [exe] + args, env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                sys.exit(f"{' '.join(args)} exited {r.returncode}: "
                         + r.stderr.strip()[-500:])
            for f in os.listdir(d):
                names = {}
                for line in open(os.path.join(d, f)):
                    m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line.strip())
                    if not m:
                        continue
                    if m.group(3):
                        names[m.group(2)] = m.group(3)
                    if m.group(1) == "fn" and m.group(2) in names:
                        fns.add(names[m.group(2)])
    return fns


def pattern(sym):
    # legacy mangling: the hash is `17h` + 16 hex digits + `E`, maybe
    # followed by LLVM's `.llvm.N` suffix of an internalized copy
    p = re.sub(r"17h[0-9a-f]{16}E.*$", "17h*", sym)
    p = re.sub(r"\.llvm\.\d+$", "*", p)
    # v0 mangling: crate disambiguators `Cs<base62>_`
    if p.startswith("_R"):
        p = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", p)
    return p


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else EXE
    nm = subprocess.run(["nm", exe], check=True, capture_output=True,
                        text=True).stdout.split("\n")
    text = [f[2] for f in (l.split() for l in nm)
            if len(f) == 3 and f[1] in "tTwW"]
    def names(p):
        rx = re.compile("^" + re.escape(p).replace(r"\*", ".*") + "$")
        return sum(1 for s in text if rx.match(s))

    # The patterns already there stay while they name a function: a run
    # may miss a path (a read that found nothing dirty calls less), so the
    # list only grows; empty it to start over.
    old = re.findall(r"^\s*\*\(\.text\.(.*)\)\s*$", open(OUT).read(), re.M)
    keep = {p for p in old if 1 <= names(p) <= MAX_MATCHES}
    for sym in executed(exe):
        if not sym.startswith("_") or any(s in sym for s in SKIP):
            continue  # libc, addresses, the benchmark
        if sym.startswith("_R") and STD_KEEP not in sym:
            continue
        p = pattern(sym)
        if p not in keep and 1 <= names(p) <= MAX_MATCHES:
            keep.add(p)
    keep = sorted(keep)
    if not keep:
        sys.exit("no function recorded: is valgrind installed?")
    head = open(OUT).read().split("SECTIONS")[0]
    body = "".join(f"    *(.text.{p})\n" for p in keep)
    with open(OUT, "w") as f:
        f.write(head + "SECTIONS\n{\n  .text.hot_path :\n  {\n" + body
                + "  }\n}\nINSERT BEFORE .text;\n")
    print(f"{OUT}: {len(keep)} patterns")


if __name__ == "__main__":
    main()
