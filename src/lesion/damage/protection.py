"""Selective protection (issue 17, item 5): which stored bits to harden, ranked from a bit-flip campaign, and
the counterfactual campaign that measures what hardening them buys (SPEC §1, bit flip; §4 for the intervals).

Hardened memory (ECC, triple redundancy) for some bits costs area; a campaign says which bits matter. The
candidates are groups (parameter, bit position): protecting one guards that bit of every weight of the
parameter, and its bit is named in the format the parameter's bits were flipped in (float32, float16,
bfloat16, int8: `bits.bit_name`). A configuration flips several bits and usually fails from one of them, so a
failing configuration shows every group it hit, culprit or not.

Evidence: a group counts as a cause when the configurations that flipped it fail more often than those that
did not, by Fisher's exact test (one-sided; the 2×2 table of flipped or not × failed or not, conditioned on
its margins, so the others' failure rate is not taken as known) at 5% divided by the number of groups tested
(Bonferroni: at most a 5% chance that any harmless group passes). A group flipped by every configuration has
no others to compare with: it is not tested (a failure rate of 1 among its configurations says nothing when
every configuration fails). Causes are ranked by excess failures (failures less hits × the others' rate) per
protected bit. With a campaign to re-run (`confirm`), each is then checked causally before it is chosen: its
failing configurations are drawn again with that group alone protected (`Target.protected`: the same draws
less its flips), and a group that cures none of them is passed over. Groups are chosen in rank order while the
budget (a share of all stored bits of the damaged parameters) lasts.

Prediction: a failing configuration with no flip in a chosen group fails as before, one with such a flip is
assumed cured; the predicted failure rate is the share of the former (Wilson interval). Counted on the
configurations that chose the groups it is optimistic (a group chosen for the failures it happened to
coincide with is credited with curing them), so the command ranks and checks on one part of the campaign and
predicts on the rest (`split`). The counterfactual campaign draws the same configurations with the protected
flips removed and measures the rate; a configuration that still fails from its other flips makes the measured
rate higher than predicted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lesion.damage.bits import FORMATS, bit_name
from lesion.damage.campaign import CampaignResult, fails
from lesion.damage.target import Target
from lesion.errors import LesionError
from lesion.stats import wilson_interval

if TYPE_CHECKING:
    from lesion.damage.campaign import Campaign

ALPHA = 0.05  # family-wise error rate of the ranking's tests


@dataclass(frozen=True)
class Group:
    """One candidate: bit `bit` of every weight of `param` (`bits` stored bits to harden, words of format
    `fmt`); `failures`: failing configurations that flipped it, `hits`: configurations that flipped it at all,
    `baseline`: the failure rate of the others, `p_value`: Fisher's one-sided exact test (None: no others to
    compare with), `cured`: failing configurations that flipped it and pass with it alone protected (None:
    not checked)."""

    param: str
    bit: int
    bits: int
    failures: int
    hits: int
    baseline: float = 0.0
    p_value: float | None = None
    fmt: str = "float32"
    cured: int | None = None

    @property
    def excess(self) -> float:
        """Failures beyond what the configurations that did not flip this group would predict."""
        return self.failures - self.hits * self.baseline

    @property
    def field(self) -> str:
        """What the bit encodes in its parameter's format ("exponent[7]", "sign", "magnitude[3]", ...)."""
        return bit_name(self.fmt, self.bit)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {**self.__dict__, "field": self.field, "excess": self.excess}


def parse_protection(texts: Sequence[str], target: Target) -> dict[str, frozenset[int]]:
    """`PARAM@B1,B2` texts (PARAM a name or pattern, as in damage SPECs) → protected bit positions per parameter."""
    out: dict[str, set[int]] = {}
    for text in texts:
        pattern, at, bits = text.partition("@")
        if not at or not pattern:
            raise LesionError(f"bad protection {text!r}: give PARAM@BITS, e.g. fc1.weight@30 or weights@30,31")
        try:
            positions = {int(b) for b in bits.split(",")}
        except ValueError as err:
            raise LesionError(f"bad protection {text!r}: bit positions must be integers") from err
        if any(not 0 <= b < 32 for b in positions):
            raise LesionError(f"bad protection {text!r}: bit positions lie in 0..31")
        for name in target.match(pattern, stored=True):
            out.setdefault(name, set()).update(positions)
    return {name: frozenset(bits) for name, bits in out.items()}


def flipped_groups(result: CampaignResult, target: Target) -> list[set[tuple[str, int]]]:
    """Per sample, the (parameter, bit) groups its random bit flips hit, decoded from its fault records."""
    sizes = {name: tensor.numel() for name, tensor in target.tensors.items()}
    out = []
    for sample in result.samples:
        groups: set[tuple[str, int]] = set()
        for fault in sample.faults:
            if fault.get("kind") != "bitflip" or "params" not in fault:
                continue
            if "indices" not in fault:
                raise LesionError("a configuration flips too many bits to list them (its record keeps a digest): "
                                  "rank protection at a lower bit-error rate or over fewer parameters")
            ends, total = [], 0
            for name in fault["params"]:
                total += sizes[name]
                ends.append((total, name))
            for key in fault["indices"]:
                flat, bit = divmod(int(key), 64)
                groups.add((next(name for end, name in ends if flat < end), bit))
        out.append(groups)
    return out


def word_formats(result: CampaignResult) -> dict[str, str]:
    """The format each flipped parameter's bits were flipped in (from the fault records: the parameter's own
    dtype by `bits.format_for`, or the damage's fmt=); a parameter flipped in two formats is refused, since its
    bit positions would mean two things."""
    formats: dict[str, str] = {}
    for sample in result.samples:
        for fault in sample.faults:
            if fault.get("kind") != "bitflip" or "params" not in fault:
                continue
            for name in fault["params"]:
                if formats.setdefault(name, fault["format"]) != fault["format"]:
                    raise LesionError(f"{name} is flipped both as {formats[name]} and as {fault['format']} words: "
                                      "rank protection with one format per parameter")
    return formats


def split(n: int, holdout: float) -> tuple[range, range]:
    """(configurations that choose, configurations that predict): the last round(n × holdout) are held out;
    with `holdout` 0 both are all n (an in-sample prediction)."""
    if not 0.0 <= holdout < 1.0:
        raise LesionError(f"the held-out share must lie in [0, 1), got {holdout}")
    held = round(n * holdout)
    if holdout == 0.0:
        return range(n), range(n)
    if held < 1 or n - held < 2:
        raise LesionError(f"{n} configurations cannot be split {1 - holdout:.0%}/{holdout:.0%} into a part that "
                          "ranks and a part that predicts: draw more (--samples) or predict in-sample (--holdout 0)")
    return range(n - held), range(n - held, n)


def _failed(result: CampaignResult) -> list[bool]:
    if result.accuracy is None or result.clean_accuracy is None:
        raise LesionError("ranking protection needs labelled data (failures are judged by accuracy)")
    tolerance = result.failure_rate["tolerance"] if result.failure_rate else 0.05
    return [fails(s.accuracy, result.clean_accuracy, tolerance) for s in result.samples]


def fisher_greater(failures: Sequence[int], hits: Sequence[int], failed_total: int, n: int) -> list[float]:
    """One-sided p-values of Fisher's exact test that a group's configurations fail more often than the others:
    P(X ≥ failures) for X hypergeometric (n configurations, `failed_total` of them failing, `hits` drawn), one
    per group."""
    import numpy as np
    from scipy.stats import hypergeom  # lazy: scipy's import costs a second

    k = np.asarray(failures, dtype=np.int64)
    return [float(p) for p in hypergeom.sf(k - 1, n, failed_total, np.asarray(hits, dtype=np.int64))]


def group_evidence(result: CampaignResult, target: Target, groups: list[set[tuple[str, int]]] | None = None,
                   among: Sequence[int] | None = None) -> tuple[list[Group], int]:
    """Every (parameter, bit) group flipped by the configurations `among` (positions in the result; default
    all) with its counts, the others' failure rate and Fisher's p-value (None for a group every one of them
    flipped: nothing to compare with), and the total number of stored bits of the flipped parameters."""
    failed = _failed(result)
    groups = flipped_groups(result, target) if groups is None else groups
    formats = word_formats(result)
    if not formats:
        raise LesionError("the campaign has no random bit flips to rank (use --damage bitflip:...:ber=R)")
    among = range(len(result.samples)) if among is None else among
    failures: dict[tuple[str, int], int] = {}
    hits: dict[tuple[str, int], int] = {}
    for k in among:
        for group in groups[k]:
            hits[group] = hits.get(group, 0) + 1
            failures[group] = failures.get(group, 0) + failed[k]
    sizes = {name: target.tensors[name].numel() for name in formats}
    n = len(among)
    failed_total = sum(failed[k] for k in among)
    keys = sorted(hits)
    compared = [key for key in keys if hits[key] < n]
    p_values = dict(zip(compared, fisher_greater([failures[key] for key in compared], [hits[key] for key in compared],
                                                 failed_total, n), strict=True))
    out = []
    for name, bit in keys:
        hit, bad = hits[(name, bit)], failures[(name, bit)]
        others = n - hit
        baseline = (failed_total - bad) / others if others else float("nan")
        out.append(Group(name, bit, sizes[name], bad, hit, baseline, p_values.get((name, bit)), formats[name]))
    return out, sum(sizes[name] * FORMATS[fmt] for name, fmt in formats.items())


def causes(evidence: list[Group]) -> list[Group]:
    """The groups of `group_evidence` whose configurations fail more often than the others' by Fisher's test at
    5% / (groups tested), most excess failures per protected bit first."""
    tested = [g for g in evidence if g.p_value is not None]
    threshold = ALPHA / max(len(tested), 1)
    ranked = [g for g in tested if g.failures and g.p_value < threshold]
    ranked.sort(key=lambda g: (-g.excess / g.bits, -g.failures, g.param, g.bit))
    return ranked


def rank(result: CampaignResult, target: Target, groups: list[set[tuple[str, int]]] | None = None,
         among: Sequence[int] | None = None) -> tuple[list[Group], int]:
    """The (parameter, bit) groups that cause failures among the configurations `among` (module docstring),
    most excess failures per protected bit first, and the total number of stored bits of the flipped
    parameters."""
    evidence, total_bits = group_evidence(result, target, groups, among)
    return causes(evidence), total_bits


def confirm(campaign: Campaign, result: CampaignResult, group: Group, groups: list[set[tuple[str, int]]],
            among: Sequence[int] | None = None, batch: int = 64) -> int:
    """The causal check of one group: how many of the failing configurations `among` (of `result`, the
    campaign's own run) that flipped it pass when drawn again with that group alone protected."""
    failed = _failed(result)
    among = range(len(result.samples)) if among is None else among
    key = (group.param, group.bit)
    todo = [result.samples[k].index for k in among if failed[k] and key in groups[k]]
    clean = result.clean_accuracy
    tolerance = result.failure_rate["tolerance"] if result.failure_rate else 0.05
    assert clean is not None
    cured = 0
    for start in range(0, len(todo), batch):
        again = campaign.evaluate(todo[start:start + batch], {group.param: frozenset({group.bit})})
        cured += sum(1 for s in again if not fails(s.accuracy, clean, tolerance))
    return cured


def choose(ranked: list[Group], total_bits: int, budget: float,
           check: Callable[[Group], int] | None = None) -> list[Group]:
    """Groups in rank order while their protected bits fit in `budget` × `total_bits`; with `check` (the
    failing configurations protecting a group alone cures, `confirm`), a group that cures none is passed over
    and the chosen groups carry their count."""
    chosen, spent = [], 0
    for group in ranked:
        if spent + group.bits <= budget * total_bits:
            if check is not None:
                group = replace(group, cured=check(group))
                if not group.cured:
                    continue
            chosen.append(group)
            spent += group.bits
    return chosen


def predicted_failure_rate(result: CampaignResult, target: Target, chosen: list[Group],
                           groups: list[set[tuple[str, int]]] | None = None, among: Sequence[int] | None = None
                           ) -> tuple[float, tuple[float, float], int]:
    """(rate, Wilson interval, failures) of the configurations `among` (default all; held out from the
    choice, for an honest prediction) that fail with no flip in a chosen group (`groups`: `flipped_groups` of
    the result, when the caller has them)."""
    protected = {(g.param, g.bit) for g in chosen}
    failed = _failed(result)
    groups = flipped_groups(result, target) if groups is None else groups
    among = range(len(result.samples)) if among is None else among
    remaining = sum(1 for k in among if failed[k] and not groups[k] & protected)
    n = len(among)
    return remaining / n, wilson_interval(remaining, n), remaining


def as_protection(chosen: list[Group]) -> dict[str, frozenset[int]]:
    """The chosen groups as `Target.protected`."""
    out: dict[str, set[int]] = {}
    for g in chosen:
        out.setdefault(g.param, set()).add(g.bit)
    return {name: frozenset(bits) for name, bits in out.items()}
