"""Selective protection (issue 17, item 5): which stored bits to harden, ranked from a bit-flip campaign, and
the counterfactual campaign that measures what hardening them buys.

Hardened memory (ECC, triple redundancy) for some bits costs area; a campaign says which bits matter. The
candidates are groups (parameter, bit position): protecting one guards that bit of every weight of the
parameter. A configuration flips several bits and usually fails from one of them, so a failing configuration
shows every group it hit, culprit or not. A group counts as a cause when the configurations that flipped it
fail more often than those that did not, with evidence: the binomial probability of at least its failures
among its hits, at the others' failure rate, is below 5% divided by the number of groups tested (Bonferroni:
at most a 5% chance that any coincidental group passes). Causes are ranked by excess failures (failures less
hits × the others' rate) per protected bit and chosen in that order while the budget (a share of all stored
bits of the damaged parameters) lasts.

Prediction: a failing configuration with no flip in a chosen group fails as before, one with such a flip is
assumed cured; the predicted failure rate is the share of the former (Wilson interval). The counterfactual
campaign draws the same configurations with the protected flips removed (`Target.protected`: the draw does
not depend on the protection) and measures the rate; a configuration that still fails from its other flips
makes the measured rate higher than predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lesion.damage.bits import FORMATS
from lesion.damage.campaign import CampaignResult, fails
from lesion.damage.target import Target
from lesion.errors import LesionError
from lesion.stats import binomial_upper_tail, wilson_interval


@dataclass(frozen=True)
class Group:
    """One candidate: bit `bit` of every weight of `param` (`bits` stored bits to harden); `failures`: failing
    configurations that flipped it, `hits`: configurations that flipped it at all."""

    param: str
    bit: int
    bits: int
    failures: int
    hits: int
    baseline: float = 0.0

    @property
    def excess(self) -> float:
        """Failures beyond what the configurations that did not flip this group would predict."""
        return self.failures - self.hits * self.baseline

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(self.__dict__)


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


def _word_bits(result: CampaignResult) -> dict[str, int]:
    """Bits per stored word of each parameter the campaign flipped (from the records' formats)."""
    width: dict[str, int] = {}
    for sample in result.samples:
        for fault in sample.faults:
            if fault.get("kind") == "bitflip" and "params" in fault:
                for name in fault["params"]:
                    width[name] = FORMATS[fault["format"]]
    return width


def rank(result: CampaignResult, target: Target, groups: list[set[tuple[str, int]]] | None = None
         ) -> tuple[list[Group], int]:
    """The (parameter, bit) groups that cause failures (module docstring), most excess failures per protected
    bit first, and the total number of stored bits of the flipped parameters."""
    if result.accuracy is None or result.clean_accuracy is None:
        raise LesionError("ranking protection needs labelled data (failures are judged by accuracy)")
    tolerance = result.failure_rate["tolerance"] if result.failure_rate else 0.05
    groups = flipped_groups(result, target) if groups is None else groups
    width = _word_bits(result)
    if not width:
        raise LesionError("the campaign has no random bit flips to rank (use --damage bitflip:...:ber=R)")
    failures: dict[tuple[str, int], int] = {}
    hits: dict[tuple[str, int], int] = {}
    for sample, hit in zip(result.samples, groups, strict=True):
        failed = fails(sample.accuracy, result.clean_accuracy, tolerance)
        for group in hit:
            hits[group] = hits.get(group, 0) + 1
            failures[group] = failures.get(group, 0) + failed
    sizes = {name: target.tensors[name].numel() for name in width}
    n = len(result.samples)
    failed_total = sum(1 for s in result.samples if fails(s.accuracy, result.clean_accuracy, tolerance))
    ranked = []
    threshold = 0.05 / max(len(hits), 1)
    for (name, bit), hit in hits.items():
        failed = failures[(name, bit)]
        others = n - hit
        baseline = (failed_total - failed) / others if others else 0.0
        if failed and binomial_upper_tail(failed, hit, baseline) < threshold:
            ranked.append(Group(name, bit, sizes[name], failed, hit, baseline))
    ranked.sort(key=lambda g: (-g.excess / g.bits, -g.failures, g.param, g.bit))
    return ranked, sum(sizes[name] * width[name] for name in width)


def choose(ranked: list[Group], total_bits: int, budget: float) -> list[Group]:
    """Groups in rank order while their protected bits fit in `budget` × `total_bits`."""
    chosen, spent = [], 0
    for group in ranked:
        if spent + group.bits <= budget * total_bits:
            chosen.append(group)
            spent += group.bits
    return chosen


def predicted_failure_rate(result: CampaignResult, target: Target, chosen: list[Group],
                           groups: list[set[tuple[str, int]]] | None = None
                           ) -> tuple[float, tuple[float, float], int]:
    """(rate, Wilson interval, failures) of the configurations that fail with no flip in a chosen group
    (`groups`: `flipped_groups` of the result, when the caller has them)."""
    protected = {(g.param, g.bit) for g in chosen}
    tolerance = result.failure_rate["tolerance"] if result.failure_rate else 0.05
    clean = result.clean_accuracy
    assert clean is not None
    groups = flipped_groups(result, target) if groups is None else groups
    remaining = sum(1 for sample, hit in zip(result.samples, groups, strict=True)
                    if fails(sample.accuracy, clean, tolerance) and not hit & protected)
    n = len(result.samples)
    return remaining / n, wilson_interval(remaining, n), remaining


def as_protection(chosen: list[Group]) -> dict[str, frozenset[int]]:
    """The chosen groups as `Target.protected`."""
    out: dict[str, set[int]] = {}
    for g in chosen:
        out.setdefault(g.param, set()).add(g.bit)
    return {name: frozenset(bits) for name, bits in out.items()}
