"""Measure personal data in free text on messages.csv: messages with each kind, found and masked.

    python -m bench.intake.eval_personal_text --data ../shared/data/messages.csv

For every message (title and body, as intake masks them) it counts the messages in which each kind
(services.common.personal_text.KINDS) was found, and the messages whose masked text a second
detection finds nothing of that kind in ("masked"). "elsewhere" counts messages in which a found
value still occurs in the masked text outside personal data (the same digits inside an identifier
such as a waybill number, which detection leaves alone on purpose). ``--show N`` prints N masked
examples of each kind (never the originals).
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.personal_text import KINDS, find, mask


@dataclass
class Tally:
    """Per kind: messages in which it was found, and in which every finding was masked."""

    messages: int = 0
    found: Counter[str] = field(default_factory=Counter)
    masked: Counter[str] = field(default_factory=Counter)
    elsewhere: Counter[str] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, text: str, *, show: int) -> None:
        self.messages += 1
        result = mask(text)
        originals = [(f.kind, text[f.start : f.end]) for f in result.found]
        again = {f.kind for f in find(result.text)}
        for kind in {k for k, _ in originals}:
            self.found[kind] += 1
            if kind not in again:
                self.masked[kind] += 1
            if any(value in result.text for k, value in originals if k == kind):
                self.elsewhere[kind] += 1
            shown = self.examples.setdefault(kind, [])
            if len(shown) < show:
                first = next(f for f in result.found if f.kind == kind)
                shown.append(result.text[max(0, first.start - 12) : first.end + 12].replace("\n", " "))
        self.findings.update(kind for kind, _ in originals)

    def lines(self) -> list[str]:
        out = [
            f"messages {self.messages}; with any personal data {self.with_any}",
            "kind        messages  findings  masked  elsewhere",
        ]
        for kind in KINDS:
            counts = (self.found[kind], self.findings[kind], self.masked[kind], self.elsewhere[kind])
            out.append(f"{kind:11} {counts[0]:8}  {counts[1]:8}  {counts[2]:6}  {counts[3]:9}")
        return out

    with_any: int = 0


def read_texts(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [f"{row['title']}\n{row['body']}" for row in csv.DictReader(handle)]


def measure(texts: Sequence[str], *, show: int = 0) -> Tally:
    tally = Tally()
    for text in texts:
        before = sum(tally.found.values())
        tally.add(text, show=show)
        if sum(tally.found.values()) > before:
            tally.with_any += 1
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="path to messages.csv")
    parser.add_argument("--show", type=int, default=0, help="masked examples to print per kind")
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"{args.data} does not exist (messages.csv is not shipped with the repository)")
    tally = measure(read_texts(args.data), show=args.show)
    for line in tally.lines():
        print(line)
    for kind, shown in tally.examples.items():
        for example in shown:
            print(f"  {kind}: …{example}…")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
