#!/usr/bin/env python3
"""A stand-in for ``clustalw -align``: pairwise identities and a guide tree of a FASTA file.

    clustalw.py -align -infile=SEQS.fasta

Writes ``SEQS.aln`` (the sequences padded to one length, with a percent-identity matrix) and
``SEQS.dnd`` (a Newick guide tree joined by average identity) into the current directory.
Standalone: needs nothing but the Python standard library and its input files.
"""

from __future__ import annotations

import sys
from pathlib import Path


def read_fasta(path: str) -> list[tuple[str, str]]:
    records: list[tuple[str, str]] = []
    for block in Path(path).read_text().split(">")[1:]:
        head, _, body = block.partition("\n")
        records.append((head.split()[0] if head.split() else "unnamed",
                        "".join(body.split())))
    return records


def identity(a: str, b: str) -> float:
    length = max(len(a), len(b)) or 1
    return sum(x == y for x, y in zip(a, b, strict=False)) / length


def guide_tree(names: list[str], ident: dict[tuple[int, int], float]) -> str:
    clusters: dict[int, tuple[str, list[int]]] = {i: (n, [i]) for i, n in enumerate(names)}

    def similarity(x: list[int], y: list[int]) -> float:
        pairs = [ident[min(a, b), max(a, b)] for a in x for b in y]
        return sum(pairs) / len(pairs)

    while len(clusters) > 1:
        keys = sorted(clusters)
        best = max(((a, b) for i, a in enumerate(keys) for b in keys[i + 1:]),
                   key=lambda p: similarity(clusters[p[0]][1], clusters[p[1]][1]))
        (ta, ma), (tb, mb) = clusters.pop(best[0]), clusters.pop(best[1])
        clusters[best[0]] = (f"({ta},{tb})", ma + mb)
    return next(iter(clusters.values()))[0] + ";\n"


def main(argv: list[str]) -> int:
    infile = next((a.split("=", 1)[1] for a in argv if a.startswith("-infile=")), None)
    if "-align" not in argv or not infile:
        print("usage: clustalw.py -align -infile=SEQS.fasta", file=sys.stderr)
        return 2
    records = read_fasta(infile)
    if len(records) < 2:
        print(f"clustalw: {infile} needs at least two sequences", file=sys.stderr)
        return 1
    names = [name for name, _ in records]
    width = max(len(seq) for _, seq in records)
    ident = {(i, j): identity(records[i][1], records[j][1])
             for i in range(len(records)) for j in range(i + 1, len(records))}
    stem = Path(infile).stem
    with open(f"{stem}.aln", "w") as out:
        out.write("CLUSTAL W (stand-in) multiple sequence alignment\n\n")
        for name, seq in records:
            out.write(f"{name:<16}{seq.ljust(width, '-')}\n")
        out.write("\n# percent identity\n")
        for (i, j), value in sorted(ident.items()):
            out.write(f"{names[i]}\t{names[j]}\t{100 * value:.1f}\n")
    Path(f"{stem}.dnd").write_text(guide_tree(names, ident))
    print(f"aligned {len(records)} sequences of up to {width} residues")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
