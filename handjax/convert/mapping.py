"""Declarative PyTorch state_dict -> nested JAX parameter tree mapping.

A mapping is a list of :class:`Rule` and :class:`Ignore` entries. Each source
key is handled by the FIRST entry whose ``source_pattern`` (a regex) matches it
in full. A :class:`Rule` names the target leaf with a template expanded by
``re.Match.expand`` (``\\1``, ``\\g<name>``) into a ``'.'``-separated path, e.g.
``r'layer\\1.\\2.conv1.kernel'``; components are looked up in the target tree,
a digit component matching an int key (``nnx.List`` items in
``nnx.to_pure_dict`` output) when no str key of that name exists.

The target tree is a nested dict (str/int keys) of arrays, typically
``nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))``.

:func:`apply_rules` does strict accounting: every source tensor is assigned
exactly once or ignored with a reason, every target leaf is filled exactly
once, shapes and dtypes are checked after the transform. All violations are
collected and raised together as one :class:`ConversionError`.

MANO guard: source keys that look like MANO model buffers (licensed data, see
``MANO_GUARD_PATTERNS``) are always ignored with :data:`MANO_REASON` and target
leaves with such names are never written (they keep the target tree's value,
which comes from the user's MANO file or the built-in model).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

MANO_REASON = "MANO buffer: licensed, taken from the user's MANO file or the built-in model"

# Full-match regexes on source keys / '.'-joined target paths. Names from smplx
# MANO (v_template, shapedirs, posedirs, J_regressor, lbs_weights, faces_tensor,
# hand_components, hand_mean), the MANO pkl (f, weights, kintree_table,
# hands_components, hands_mean, hands_coeffs) and manopth (th_* buffers).
MANO_GUARD_PATTERNS: tuple[str, ...] = (
    r"(?:.*\.)?(?:v_template|shapedirs|posedirs|J_regressor|lbs_weights|faces_tensor|faces|kintree_table)",
    r"(?:.*\.)?th_(?:v_template|shapedirs|posedirs|J_regressor|weights|faces|hands_mean|comps|selected_comps|betas)",
    r".*hands?_(?:components|mean|coeffs).*",
)

Transform = Union[str, Callable[[np.ndarray], np.ndarray]]


# ----------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------


def _conv(x: np.ndarray) -> np.ndarray:
    """torch conv weight (O, I, *spatial) -> flax kernel (*spatial, I, O)."""
    if x.ndim < 3:
        raise ValueError(f"'conv' expects a (O, I, *spatial) weight, got shape {x.shape}")
    return np.transpose(x, (*range(2, x.ndim), 1, 0))


def _linear(x: np.ndarray) -> np.ndarray:
    """torch linear weight (out, in) -> flax kernel (in, out)."""
    if x.ndim != 2:
        raise ValueError(f"'linear' expects a (out, in) weight, got shape {x.shape}")
    return x.T


def _vector(name: str) -> Callable[[np.ndarray], np.ndarray]:
    def check(x: np.ndarray) -> np.ndarray:
        if x.ndim != 1:
            raise ValueError(f"'{name}' expects a 1-D BatchNorm tensor, got shape {x.shape}")
        return x

    return check


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": _conv,
    "linear": _linear,
    "bn_scale": _vector("bn_scale"),
    "bn_bias": _vector("bn_bias"),
    "bn_mean": _vector("bn_mean"),
    "bn_var": _vector("bn_var"),
    "identity": lambda x: x,
    "transpose": lambda x: x.T,
}


# ----------------------------------------------------------------------------
# rules
# ----------------------------------------------------------------------------


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{what}: invalid regex {pattern!r}: {e}") from e


@dataclass(frozen=True)
class Rule:
    """Map source keys matching ``source_pattern`` to ``target`` via ``transform``.

    target: a ``re.Match.expand`` template giving a '.'-separated path, or a
    callable ``match -> tuple`` of path components. transform: a name in
    ``TRANSFORMS`` or a callable ``np.ndarray -> np.ndarray``.
    """

    source_pattern: str
    target: str | Callable[[re.Match], tuple]
    transform: Transform = "identity"
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "regex", _compile(self.source_pattern, "Rule.source_pattern"))
        if isinstance(self.transform, str) and self.transform not in TRANSFORMS:
            raise ValueError(f"Rule({self.source_pattern!r}): unknown transform {self.transform!r}; "
                             f"expected one of {sorted(TRANSFORMS)} or a callable")
        if not (isinstance(self.transform, str) or callable(self.transform)):
            raise TypeError(f"Rule({self.source_pattern!r}): transform must be a name or a callable")
        if not (isinstance(self.target, str) or callable(self.target)):
            raise TypeError(f"Rule({self.source_pattern!r}): target must be a template str or a callable")

    @property
    def transform_name(self) -> str:
        return self.transform if isinstance(self.transform, str) else getattr(self.transform, "__name__", "callable")

    def apply(self, x: np.ndarray) -> np.ndarray:
        fn = TRANSFORMS[self.transform] if isinstance(self.transform, str) else self.transform
        return np.ascontiguousarray(fn(x))

    def target_parts(self, match: re.Match) -> tuple:
        if callable(self.target):
            return tuple(self.target(match))
        return tuple(match.expand(self.target).split("."))


@dataclass(frozen=True)
class Ignore:
    """Source keys matching ``source_pattern`` are deliberately unused, for ``reason``."""

    source_pattern: str
    reason: str
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "regex", _compile(self.source_pattern, "Ignore.source_pattern"))
        if not self.reason or not self.reason.strip():
            raise ValueError(f"Ignore({self.source_pattern!r}) needs a non-empty reason")


# ----------------------------------------------------------------------------
# target tree helpers
# ----------------------------------------------------------------------------

Path = tuple  # of str | int


def path_str(path: Path) -> str:
    return ".".join(str(p) for p in path)


def flatten_tree(tree: Mapping, prefix: Path = ()) -> dict[Path, Any]:
    """{path tuple: leaf} of a nested mapping; non-mapping values are leaves."""
    out: dict[Path, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten_tree(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _resolve(tree: Mapping, parts: tuple) -> Path | None:
    """Match template components to the tree's real keys (digit str -> int key)."""
    node: Any = tree
    resolved = []
    for part in parts:
        if not isinstance(node, Mapping):
            return None
        if part in node:
            key = part
        elif isinstance(part, str) and part.isdigit() and int(part) in node:
            key = int(part)
        else:
            return None
        resolved.append(key)
        node = node[key]
    return None if isinstance(node, Mapping) else tuple(resolved)


def _rebuild(tree: Mapping, leaves: dict[Path, Any], prefix: Path = ()) -> dict:
    """Copy of ``tree``'s structure with leaves taken from ``leaves`` by path."""
    return {
        key: _rebuild(value, leaves, prefix + (key,)) if isinstance(value, Mapping) else leaves[prefix + (key,)]
        for key, value in tree.items()
    }


def _guarded(name: str, guards: list[re.Pattern]) -> bool:
    return any(g.fullmatch(name) for g in guards)


# ----------------------------------------------------------------------------
# apply
# ----------------------------------------------------------------------------


@dataclass
class MappingReport:
    """assigned: (source key, target path, transform); ignored: (source key, reason);
    kept_targets: target paths left as in the target tree (MANO guard / keep);
    cast: 'source -> target: from_dtype -> to_dtype' entries."""

    assigned: list[tuple[str, str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    kept_targets: list[str] = field(default_factory=list)
    cast: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for _, r in self.ignored:
            reasons[r] = reasons.get(r, 0) + 1
        lines = [f"{len(self.assigned)} tensors assigned, {len(self.ignored)} ignored, "
                 f"{len(self.kept_targets)} target leaves kept"]
        lines += [f"  ignored x{n}: {r}" for r, n in sorted(reasons.items())]
        return "\n".join(lines)


@dataclass
class _Problems:
    missing_targets: list[str] = field(default_factory=list)
    unused_sources: list[str] = field(default_factory=list)
    unknown_targets: list[str] = field(default_factory=list)
    duplicate_targets: list[str] = field(default_factory=list)
    guarded_targets: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)
    dtype_mismatches: list[str] = field(default_factory=list)
    transform_errors: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)


_PROBLEM_TITLES = {
    "missing_targets": "target leaves not filled by any source tensor",
    "unused_sources": "source tensors matched by no Rule or Ignore",
    "unknown_targets": "rules pointing at paths that are not leaves of the target tree",
    "duplicate_targets": "target leaves filled by more than one source",
    "guarded_targets": "rules that would write a MANO (licensed) target leaf",
    "shape_mismatches": "shape mismatches (after transform)",
    "dtype_mismatches": "dtype mismatches (after transform)",
    "transform_errors": "transform failures",
}


class ConversionError(ValueError):
    """All violations of one :func:`apply_rules` call; attributes hold the lists."""

    def __init__(self, source_name: str, problems: _Problems):
        self.source_name = source_name
        for name in _PROBLEM_TITLES:
            setattr(self, name, list(getattr(problems, name)))
        lines = [f"cannot map {source_name} onto the target tree:"]
        for name, title in _PROBLEM_TITLES.items():
            items = getattr(problems, name)
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items]
        super().__init__("\n".join(lines))


def _leaf_meta(leaf: Any) -> tuple[tuple, np.dtype]:
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    dtype = np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))
    return shape, dtype


def _match_dtype(value: np.ndarray, target: np.dtype, allow_cast: bool) -> np.ndarray | None:
    """value in the target dtype, or None if not allowed (only same-kind, lossless-int casts)."""
    if value.dtype == target:
        return value
    if not allow_cast or value.dtype.kind != target.kind and not {value.dtype.kind, target.kind} <= {"i", "u"}:
        return None
    cast = value.astype(target)
    if target.kind in "iu" and not np.array_equal(cast.astype(value.dtype), value):
        return None
    return cast


def apply_rules(
    state_dict: Mapping[str, np.ndarray],
    rules: list[Rule | Ignore],
    target_tree: Mapping,
    *,
    keep_targets: tuple[str, ...] = (),
    never_write: tuple[str, ...] = (),
    allow_cast: bool = False,
    source_name: str = "state dict",
) -> tuple[dict, MappingReport]:
    """Fill ``target_tree``'s leaves from ``state_dict`` using ``rules``.

    state_dict: flat {key: np.ndarray} (e.g. from ``extract_state_dict``).
    rules: first full match wins; source keys matching the MANO guard (plus
    ``never_write`` regexes) are ignored before any rule is tried.
    target_tree: nested dict (str/int keys) of arrays giving the expected
    shape and dtype of every leaf. keep_targets: regexes (full match on the
    '.'-joined path) of leaves that may stay unfilled and keep their value.
    allow_cast: cast to the target dtype when of the same kind (float->float,
    int->int if lossless); otherwise dtypes must be equal.
    source_name: used in error messages (e.g. the checkpoint path).

    Returns ``(new_tree, report)``: new_tree has target_tree's structure with
    numpy leaves. Raises ConversionError listing every violation.
    """
    guards = [_compile(p, "never_write") for p in MANO_GUARD_PATTERNS + tuple(never_write)]
    keeps = [_compile(p, "keep_targets") for p in keep_targets]
    targets = flatten_tree(target_tree)
    problems, report = _Problems(), MappingReport()
    filled: dict[Path, tuple[str, np.ndarray]] = {}
    attempted: set[Path] = set()  # targets some rule aimed at (failures are reported there, not as missing)

    for key, value in state_dict.items():
        if _guarded(key, guards):
            report.ignored.append((key, MANO_REASON))
            continue
        entry, match = next(((r, m) for r in rules if (m := r.regex.fullmatch(key))), (None, None))
        if entry is None:
            problems.unused_sources.append(f"{key} {tuple(np.shape(value))}")
        elif isinstance(entry, Ignore):
            report.ignored.append((key, entry.reason))
        else:
            _assign(key, np.asarray(value), entry, match, target_tree, targets, guards, allow_cast,
                    filled, attempted, problems, report)

    leaves: dict[Path, Any] = {}
    for path, leaf in targets.items():
        name = path_str(path)
        if path in filled:
            leaves[path] = filled[path][1]
        elif _guarded(name, guards) or _guarded(name, keeps):
            leaves[path] = leaf
            report.kept_targets.append(name)
        elif path not in attempted:
            shape, dtype = _leaf_meta(leaf)
            problems.missing_targets.append(f"{name} {shape} {dtype}")
    if problems.any():
        raise ConversionError(source_name, problems)
    return _rebuild(target_tree, leaves), report


def _assign(key, value, rule, match, target_tree, targets, guards, allow_cast, filled, attempted, problems,
            report):
    """Apply one Rule to one source tensor, recording the result or the problem."""
    try:
        parts = rule.target_parts(match)
    except Exception as e:  # bad template group, callable failure
        problems.transform_errors.append(f"{key}: target template of rule {rule.source_pattern!r}: {e}")
        return
    path = _resolve(target_tree, parts)
    if path is None:
        problems.unknown_targets.append(f"{key} -> {'.'.join(map(str, parts))}")
        return
    name = path_str(path)
    attempted.add(path)
    if _guarded(name, guards):
        problems.guarded_targets.append(f"{key} -> {name}")
        return
    if path in filled:
        problems.duplicate_targets.append(f"{name} <- {filled[path][0]} and {key}")
        return
    try:
        out = rule.apply(value)
    except Exception as e:
        problems.transform_errors.append(f"{key} -> {name}: {rule.transform_name}: {e}")
        return
    shape, dtype = _leaf_meta(targets[path])
    if out.shape != shape:
        problems.shape_mismatches.append(
            f"{key} {value.shape} -> {name}: after '{rule.transform_name}' {out.shape}, target expects {shape}")
        return
    cast = _match_dtype(out, dtype, allow_cast)
    if cast is None:
        problems.dtype_mismatches.append(f"{key} {out.dtype} -> {name}: target dtype {dtype}")
        return
    if cast.dtype != out.dtype:
        report.cast.append(f"{key} -> {name}: {out.dtype} -> {dtype}")
    filled[path] = (key, cast)
    report.assigned.append((key, name, rule.transform_name))


def apply_to_model(model, state_dict: Mapping[str, np.ndarray], rules: list[Rule | Ignore], *,
                   wrt: tuple = (), **kwargs) -> MappingReport:
    """Convert ``state_dict`` with ``rules`` and write it into an nnx ``model`` in place.

    wrt: nnx variable types to fill (default ``(nnx.Param, nnx.BatchStat)``);
    kwargs go to :func:`apply_rules`. Returns the MappingReport.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    wrt = wrt or (nnx.Param, nnx.BatchStat)
    state = nnx.state(model, nnx.Any(*wrt))
    new_tree, report = apply_rules(state_dict, rules, nnx.to_pure_dict(state), **kwargs)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, new_tree))
    nnx.update(model, state)
    return report
