#!/usr/bin/env python3
"""A stand-in for ``blastall``: scores a protein query against a FASTA database.

    blast.py -p blastp -d DB.fasta -i QUERY.fasta [-e EVALUE] -o OUT.txt

Score = number of 3-letter words shared with the query; hits above a small threshold are written
to OUT.txt, best first, as a tabular report. Standalone: needs nothing but the Python standard
library and its input files.
"""

from __future__ import annotations

import argparse
import math
import sys

WORD = 3


def read_fasta(path: str) -> list[tuple[str, str]]:
    records: list[tuple[str, str]] = []
    name = ""
    chunks: list[str] = []
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if line.startswith(">"):
                if name:
                    records.append((name, "".join(chunks)))
                name, chunks = line[1:].split()[0] if line[1:].split() else "unnamed", []
            elif line:
                chunks.append(line)
    if name:
        records.append((name, "".join(chunks)))
    return records


def words(sequence: str) -> set[str]:
    return {sequence[i:i + WORD] for i in range(len(sequence) - WORD + 1)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="blast")
    parser.add_argument("-p", default="blastp")
    parser.add_argument("-d", required=True, help="database (FASTA file)")
    parser.add_argument("-i", required=True, help="query (FASTA file)")
    parser.add_argument("-e", type=float, default=10.0, help="e-value threshold")
    parser.add_argument("-o", required=True, help="output file")
    args = parser.parse_args()
    query = read_fasta(args.i)
    if not query:
        print(f"blast: no sequence in {args.i}", file=sys.stderr)
        return 1
    query_name, query_seq = query[0]
    query_words = words(query_seq)
    database = read_fasta(args.d)
    hits = []
    for name, seq in database:
        score = len(query_words & words(seq))
        evalue = len(database) * len(query_seq) * len(seq) * math.exp(-0.9 * score)
        if score and evalue <= args.e:
            hits.append((score, evalue, name, len(seq)))
    hits.sort(key=lambda h: (-h[0], h[2]))
    with open(args.o, "w") as out:
        out.write(f"# {args.p} query={query_name} length={len(query_seq)} "
                  f"database={args.d} sequences={len(database)}\n")
        out.write("# subject\tlength\tscore\tevalue\n")
        for score, evalue, name, length in hits:
            out.write(f"{name}\t{length}\t{score}\t{evalue:.2g}\n")
    print(f"{len(hits)} hits for {query_name} in {len(database)} sequences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
