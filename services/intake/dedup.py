"""Repeat and duplicate detection (重复件/并单): exact fingerprints and 64-bit SimHash near-duplicates.

Citizens re-post the same message (same text, sometimes with a changed phrase or punctuation)
to get attention; a clerk merges those into the earlier case. The exact fingerprint catches
verbatim re-posts; SimHash over character 3-grams catches light edits. ``NearDuplicateIndex``
answers "which earlier cases are within k bits" without comparing against every case.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

BITS = 64
SHINGLE = 3
BANDS = 4
# A query also probes every band value one bit away, so a match needs only a band within 1 bit:
# with 4 bands, any two hashes within 4 * 2 - 1 = 7 bits are found (pigeonhole).
MAX_SEARCH_DISTANCE = 2 * BANDS - 1
_BAND_BITS = BITS // BANDS
_BAND_MASK = (1 << _BAND_BITS) - 1
_MASK64 = (1 << BITS) - 1

# Chosen on messages.csv with ``python -m bench.intake.eval_dedup``. dup_group only marks
# verbatim re-posts, which distance 0 already finds; the pairs at 1–7 bits are still ≥ 70 % real
# near-duplicates (normalised texts ≥ 80 % alike: edited re-posts, changed titles) and 85 % over
# 0–7, while beyond 8 bits unrelated messages take over. Hits are suggestions a clerk confirms.
DEFAULT_MAX_DISTANCE = 7

# Everything that is not a letter or digit (any script) is noise for duplicate detection: re-posts
# differ in punctuation, spaces, line breaks and full/half width, never in meaning.
_NOISE = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """NFKC (full width → half width), lower case, punctuation and whitespace removed."""
    return _NOISE.sub("", unicodedata.normalize("NFKC", text).lower())


def submission_text(title: str, body: str) -> str:
    """The text compared for duplicates: title and body together (a re-post may change either)."""
    return f"{title}\n{body}"


def fingerprint(text: str) -> str:
    """sha256 hex of the normalised text: equal for verbatim re-posts, including punctuation edits."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def simhash(text: str) -> int:
    """64-bit SimHash (Charikar) over character 3-grams of the normalised text, weighted by count."""
    return _simhash_of_normalised(normalise(text))


def signature(text: str) -> tuple[str, int]:
    """(``fingerprint(text)``, ``simhash(text)``), normalising the text once."""
    normalised = normalise(text)
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest(), _simhash_of_normalised(normalised)


# Version 2 of the shingle hash (intake migration 0002 recomputes stored values): a shingle is its
# three code points packed into one 64-bit key (code points fit in 21 bits), mixed by the
# splitmix64 finaliser, a bijection whose output bits each flip with half the input bits, so every
# bit is a fair vote. All in numpy at once: version 1 called blake2b per shingle from Python, 586 µs
# for an average message of messages.csv (367 characters), against 99 µs now. Near-duplicate
# quality on messages.csv is the same within the spread of hash seeds (all 201 dup_group pairs
# within 7 bits; python -m bench.intake.eval_dedup).
SIMHASH_VERSION = 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHIFTS = tuple(np.uint64(n) for n in (42, 21, 30, 27, 31))


def _simhash_of_normalised(normalised: str) -> int:
    """SimHash over every character 3-gram occurrence (a shingle seen twice votes twice)."""
    if not normalised:
        return 0
    codes = np.frombuffer(normalised.encode("utf-32-le"), dtype="<u4").astype(np.uint64)
    if len(codes) < SHINGLE:  # one shingle: the whole text, padded
        codes = np.concatenate([codes, np.zeros(SHINGLE - len(codes), dtype=np.uint64)])
    high, mid, s30, s27, s31 = _SHIFTS
    keys = (codes[:-2] << high) | (codes[1:-1] << mid) | codes[2:]
    # Unsigned 64-bit arithmetic wraps in numpy arrays, as the finaliser wants.
    z = keys + _GOLDEN
    z = (z ^ (z >> s30)) * _MIX1
    z = (z ^ (z >> s27)) * _MIX2
    z ^= z >> s31
    # Big-endian bytes, so unpackbits lists each hash's bits most significant first.
    bits = np.unpackbits(z.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    ones = np.count_nonzero(bits, axis=0)
    # A bit of the SimHash is set where more than half of the shingles' hashes have it set.
    return int.from_bytes(np.packbits(2 * ones > len(keys)).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & _MASK64).bit_count()


def _bands(value: int) -> Iterable[tuple[int, int]]:
    for band in range(BANDS):
        yield band, (value >> (band * _BAND_BITS)) & _BAND_MASK


def _probes(band_value: int) -> Iterable[int]:
    yield band_value
    for bit in range(_BAND_BITS):
        yield band_value ^ (1 << bit)


class NearDuplicateIndex:
    """In-memory SimHash index with banded, multi-probe lookup.

    The 64 bits are cut into 4 bands of 16; each case is filed under its 4 band values. Two hashes
    within 7 bits have at least one band differing in at most 1 bit, so a query looks up each of
    its band values and the 16 values one bit away (68 bucket lookups) and compares only the cases
    found there, instead of scanning every case. Larger distances could be missed, so ``query``
    refuses them rather than answer incompletely.
    """

    def __init__(self) -> None:
        self._hashes: dict[str, int] = {}
        self._buckets: dict[tuple[int, int], set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, case_id: str, text: str) -> int:
        """Index a case's text; returns its simhash (to store beside the case)."""
        return self.add_hash(case_id, simhash(text))

    def add_hash(self, case_id: str, value: int) -> int:
        """Index a stored simhash (rebuilding the index at start-up needs no re-hashing)."""
        self.remove(case_id)
        self._hashes[case_id] = value
        for key in _bands(value):
            self._buckets[key].add(case_id)
        return value

    def remove(self, case_id: str) -> None:
        value = self._hashes.pop(case_id, None)
        if value is None:
            return
        for key in _bands(value):
            bucket = self._buckets[key]
            bucket.discard(case_id)
            if not bucket:
                del self._buckets[key]

    def query(self, text: str, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[tuple[str, int]]:
        """Indexed cases within ``max_distance`` bits of the text's simhash, nearest first."""
        return self.query_hash(simhash(text), max_distance)

    def query_hash(self, value: int, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[tuple[str, int]]:
        if not 0 <= max_distance <= MAX_SEARCH_DISTANCE:
            raise ValueError(f"max_distance must be between 0 and {MAX_SEARCH_DISTANCE}")
        candidates: set[str] = set()
        for band, band_value in _bands(value):
            for probe in _probes(band_value):
                candidates |= self._buckets.get((band, probe), set())
        found = [(case_id, hamming(value, self._hashes[case_id])) for case_id in candidates]
        return sorted((hit for hit in found if hit[1] <= max_distance), key=lambda hit: (hit[1], hit[0]))
