#!/usr/bin/env python3
"""A stand-in for ``golden``: fetches one entry of a FASTA database.

    golden.py DB:ENTRY --dbdir DIR

Reads ``DIR/DB.fasta``, prints the entry whose name is ENTRY (case-insensitive) and writes it to
``ENTRY.fasta`` in the current directory. Exit status 1 when there is no such entry.
Standalone: needs nothing but the Python standard library and its input files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(prog="golden")
    parser.add_argument("query", help="DB:ENTRY, e.g. uniprot_sprot:abcd2_rat")
    parser.add_argument("--dbdir", default=".", help="where DB.fasta is")
    args = parser.parse_args()
    database, sep, entry = args.query.partition(":")
    if not sep or not entry:
        print(f"golden: {args.query!r} is not DB:ENTRY", file=sys.stderr)
        return 2
    found: list[str] = []
    keep = False
    with open(Path(args.dbdir) / f"{database}.fasta") as f:
        for line in f:
            if line.startswith(">"):
                if found:
                    break
                keep = line[1:].split()[0].lower() == entry.lower() if line[1:].split() else False
            if keep:
                found.append(line)
    if not found:
        print(f"golden: no entry {entry} in {database}", file=sys.stderr)
        return 1
    text = "".join(found)
    Path(f"{entry}.fasta").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
