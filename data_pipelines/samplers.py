"""Sequence-aware sampling over a frame-per-record dataset (pure numpy, no grain).

A :class:`SequenceIndex` maps records to (sequence_id, frame_index, annotated). Three
sampling units build on it, each a function of an *anchor* record and a
``np.random.Generator`` so that grain transformations stay deterministic:

* frame: the anchor alone;
* window (TempCLR positives): the anchor plus ``k - 1`` other frames of the same sequence
  with ``|frame_index - anchor's| <= window``, optionally followed by ``num_negatives``
  frames of the same sequence OUTSIDE the window (extra negatives);
* sparse pair (handobjectconsist photometric consistency): the anchor and the nearest
  annotated frame of its sequence (ties go to the earlier frame; an annotated anchor is
  its own reference); :func:`pair_anchors_within` limits the query -> reference distance;
* subject (identity-aware personalisation): ``num_frames`` records of the anchor's subject
  (a :class:`SubjectIndex` of per-record subject ids, any sequences).

:func:`annotation_fraction_mask` picks the deterministic labelled fraction of a split
(handobjectconsist's ``--fraction``).

Temporal distances are in ``frame_index`` units, so sequences with gaps are handled.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class SequenceIndex:
    """Per-record sequence layout; arrays have one entry per record (N,).

    order: record ids sorted by (sequence_id, frame_index); start[r] / length[r]: slice of
    ``order`` holding r's sequence; nearest_annotated[r]: record id of the annotated frame of
    r's sequence closest in time (earlier wins ties), -1 if the sequence has none.
    """

    sequence_id: np.ndarray
    frame_index: np.ndarray
    annotated: np.ndarray
    order: np.ndarray
    start: np.ndarray
    length: np.ndarray
    nearest_annotated: np.ndarray

    @staticmethod
    def from_arrays(sequence_id: Sequence[int], frame_index: Sequence[int],
                    annotated: Sequence[bool] | None = None) -> "SequenceIndex":
        seq = np.asarray(sequence_id, np.int64)
        frame = np.asarray(frame_index, np.int64)
        ann = np.ones(len(seq), bool) if annotated is None else np.asarray(annotated, bool)
        if seq.ndim != 1 or frame.shape != seq.shape or ann.shape != seq.shape:
            raise ValueError(f"SequenceIndex: sequence_id, frame_index, annotated must be equal-length 1-D, "
                             f"got {seq.shape}, {frame.shape}, {ann.shape}")
        if len(seq) == 0:
            raise ValueError("SequenceIndex: no records")
        order = np.lexsort((frame, seq))
        sorted_seq, sorted_frame = seq[order], frame[order]
        dup = (sorted_seq[1:] == sorted_seq[:-1]) & (sorted_frame[1:] == sorted_frame[:-1])
        if np.any(dup):
            i = int(np.argmax(dup))
            raise ValueError(f"SequenceIndex: duplicate (sequence_id, frame_index) = "
                             f"({sorted_seq[i]}, {sorted_frame[i]})")
        bounds = np.flatnonzero(np.r_[True, sorted_seq[1:] != sorted_seq[:-1], True])
        starts, lengths = bounds[:-1], np.diff(bounds)
        seq_of_pos = np.repeat(np.arange(len(starts)), lengths)
        start = np.empty(len(seq), np.int64)
        length = np.empty(len(seq), np.int64)
        start[order] = starts[seq_of_pos]
        length[order] = lengths[seq_of_pos]
        nearest = _nearest_annotated(order, starts, lengths, frame, ann)
        return SequenceIndex(seq, frame, ann, order, start, length, nearest)

    @staticmethod
    def from_metadata(index: Mapping[str, Sequence]) -> "SequenceIndex":
        """From ``{'sequence_id': [...], 'frame_index': [...], 'annotated': [...]}``."""
        missing = [k for k in ("sequence_id", "frame_index") if k not in index]
        if missing:
            raise KeyError(f"SequenceIndex.from_metadata: missing key(s) {missing}; got {sorted(index)}")
        return SequenceIndex.from_arrays(index["sequence_id"], index["frame_index"], index.get("annotated"))

    def __len__(self) -> int:
        return len(self.sequence_id)

    def sequence_records(self, record: int) -> np.ndarray:
        """Record ids of ``record``'s sequence in frame order."""
        s = self.start[record]
        return self.order[s:s + self.length[record]]


def _nearest_annotated(order, starts, lengths, frame, annotated) -> np.ndarray:
    """(N,) nearest annotated record of the same sequence (earlier wins ties), -1 if none."""
    nearest = np.full(len(frame), -1, np.int64)
    for s, n in zip(starts, lengths):
        recs = order[s:s + n]
        ann = recs[annotated[recs]]
        if len(ann) == 0:
            continue
        t, ta = frame[recs], frame[ann]
        j = np.clip(np.searchsorted(ta, t), 1, max(len(ta) - 1, 1))
        if len(ta) == 1:
            nearest[recs] = ann[0]
            continue
        before, after = j - 1, j
        pick_after = np.abs(ta[after] - t) < np.abs(t - ta[before])
        nearest[recs] = np.where(pick_after, ann[after], ann[before])
    return nearest


def window_partners(index: SequenceIndex, anchor: int, window: int) -> Tuple[np.ndarray, np.ndarray]:
    """(inside, outside): records of the anchor's sequence, other than the anchor, with
    |dt| <= window and |dt| > window."""
    recs = index.sequence_records(anchor)
    dt = np.abs(index.frame_index[recs] - index.frame_index[anchor])
    others = recs != anchor
    return recs[others & (dt <= window)], recs[others & (dt > window)]


def _choose(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """n records from pool, without replacement when it is large enough."""
    if n == 0:
        return np.zeros(0, np.int64)
    return rng.choice(pool, size=n, replace=len(pool) < n).astype(np.int64)


def sample_window(index: SequenceIndex, anchor: int, rng: np.random.Generator, k: int, window: int,
                  num_negatives: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(records (k + num_negatives,), in_window (k + num_negatives,) bool).

    records[0] is the anchor, records[1:k] positives within the window (the anchor is
    repeated if its sequence has no other frame in the window), records[k:] negatives
    outside the window (an error if there are none: use :func:`window_anchors`).
    """
    inside, outside = window_partners(index, anchor, window)
    if len(inside) == 0:
        inside = np.array([anchor], np.int64)
    positives = _choose(rng, inside, k - 1)
    if num_negatives and len(outside) == 0:
        raise ValueError(f"record {anchor}: no frame of its sequence lies outside the window {window}")
    negatives = _choose(rng, outside, num_negatives)
    records = np.concatenate([[anchor], positives, negatives]).astype(np.int64)
    in_window = np.arange(len(records)) < k
    return records, in_window


def frame_anchors(index: SequenceIndex, annotated_only: bool = False) -> np.ndarray:
    """Anchor records of frame mode (all, or annotated frames only)."""
    return np.flatnonzero(index.annotated) if annotated_only else np.arange(len(index))


def window_anchors(index: SequenceIndex, window: int, num_negatives: int = 0) -> np.ndarray:
    """Anchors of window mode: all records, or with negatives only those whose sequence has
    a frame outside the window."""
    if num_negatives == 0:
        return np.arange(len(index))
    first = index.frame_index[index.order[index.start]]
    last = index.frame_index[index.order[index.start + index.length - 1]]
    t = index.frame_index
    return np.flatnonzero((t - first > window) | (last - t > window))


def pair_anchors(index: SequenceIndex, unannotated_only: bool = False) -> np.ndarray:
    """Anchors of sparse-pair mode: frames whose sequence has an annotated frame (optionally
    only the un-annotated ones)."""
    ok = index.nearest_annotated >= 0
    if unannotated_only:
        ok &= ~index.annotated
    return np.flatnonzero(ok)


def pair_anchors_within(index: SequenceIndex, max_distance: int | None = None,
                        unannotated_only: bool = False) -> np.ndarray:
    """Anchors of pair mode with a distance limit: as :func:`pair_anchors`, keeping only the
    frames whose nearest annotated frame lies at most ``max_distance`` frame_index units away
    (None: no limit)."""
    anchors = pair_anchors(index, unannotated_only)
    if max_distance is None:
        return anchors
    if max_distance < 0:
        raise ValueError(f"pair mode: max_distance must be >= 0 or None, got {max_distance}")
    dt = np.abs(index.frame_index[anchors] - index.frame_index[index.nearest_annotated[anchors]])
    return anchors[dt <= max_distance]


# ----------------------------------------------------------------------------- subjects
@dataclasses.dataclass(frozen=True)
class SubjectIndex:
    """Per-record subject layout (identity-aware sampling); arrays have one entry per record (N,).

    subject_id: the record's subject; order: record ids sorted by (subject_id, record);
    start[r] / length[r]: slice of ``order`` holding r's subject's records (as
    :class:`SequenceIndex` does for sequences).
    """

    subject_id: np.ndarray
    order: np.ndarray
    start: np.ndarray
    length: np.ndarray

    @staticmethod
    def from_arrays(subject_id: Sequence[int]) -> "SubjectIndex":
        subj = np.asarray(subject_id, np.int64)
        if subj.ndim != 1 or len(subj) == 0:
            raise ValueError(f"SubjectIndex: subject_id must be a non-empty 1-D array, got shape {subj.shape}")
        order = np.lexsort((np.arange(len(subj)), subj))
        sorted_subj = subj[order]
        bounds = np.flatnonzero(np.r_[True, sorted_subj[1:] != sorted_subj[:-1], True])
        starts, lengths = bounds[:-1], np.diff(bounds)
        group = np.repeat(np.arange(len(starts)), lengths)
        start = np.empty(len(subj), np.int64)
        length = np.empty(len(subj), np.int64)
        start[order] = starts[group]
        length[order] = lengths[group]
        return SubjectIndex(subj, order, start, length)

    def __len__(self) -> int:
        return len(self.subject_id)

    def subject_records(self, record: int) -> np.ndarray:
        """Record ids of ``record``'s subject, in record order."""
        s = self.start[record]
        return self.order[s:s + self.length[record]]

    @property
    def subjects(self) -> np.ndarray:
        """The distinct subject ids, sorted."""
        return np.unique(self.subject_id)


def sample_subject(index: SubjectIndex, anchor: int, rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """(num_frames,) records of the anchor's subject: the anchor first, then ``num_frames - 1``
    other records of the same subject, distinct while the subject has enough (otherwise drawn
    with replacement from the subject's other records, or the anchor repeated for a
    one-record subject)."""
    if num_frames < 1:
        raise ValueError(f"subject mode: num_frames must be >= 1, got {num_frames}")
    recs = index.subject_records(anchor)
    others = recs[recs != anchor]
    if len(others) == 0:
        others = np.array([anchor], np.int64)
    return np.concatenate([[anchor], _choose(rng, others, num_frames - 1)]).astype(np.int64)


def subject_anchors(index: SubjectIndex, min_frames: int = 1) -> np.ndarray:
    """Anchors of subject mode: records whose subject has at least ``min_frames`` records."""
    return np.flatnonzero(index.length >= min_frames)


# ----------------------------------------------------------------------------- annotation fraction
def annotation_fraction_mask(annotated: Sequence[bool], fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: the annotated records that KEEP their labels when only ``fraction`` of them may.

    Exactly ``round(fraction * n_annotated)`` of the annotated records are kept, chosen by a
    permutation drawn from ``np.random.default_rng(seed)`` alone, so every process (same
    records, same seed) gets the same mask. fraction 1 keeps every annotated record, 0 none.
    """
    ann = np.asarray(annotated, bool)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"annotation fraction must lie in [0, 1], got {fraction}")
    candidates = np.flatnonzero(ann)
    keep = int(round(fraction * len(candidates)))
    chosen = np.random.default_rng(seed).permutation(candidates)[:keep]
    mask = np.zeros(len(ann), bool)
    mask[chosen] = True
    return mask
