"""DAPO's sample-side pieces: soft overlong punishment and dynamic sampling (pure, no I/O).

DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
arXiv:2503.14476) changes GRPO in four places. Two are loss options: clip-higher
(`clipped_pg_loss(clip_high > clip_low)`) and token-level aggregation
(`aggregation="token_mean"`); it also drops the KL term (kl_coef=0). The other two live here:

- Soft overlong punishment (eq. 13): a length penalty added to the reward, 0 up to
  max_len - buffer_len, then falling linearly to -1 at max_len, -1 beyond. A truncated
  answer is punished gradually instead of being scored as if its reasoning were wrong.
- Dynamic sampling: a group whose rewards are all equal (all right or all wrong) has zero
  group-relative advantage, so it adds no gradient but still dilutes the token mean. DAPO
  drops such groups and generates more prompts until the batch holds `target_groups`
  informative groups. `DynamicSampler` is that refill loop's bookkeeping, without the
  generation itself, so the controller keeps its generate/score calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def overlong_penalty(
    lengths: Tensor,  # [N] long, response lengths in tokens
    *,
    max_len: int,
    buffer_len: int,
) -> Tensor:  # [N] float, in [-1, 0]
    """DAPO eq. 13: 0 if L <= max_len - buffer_len; (max_len - buffer_len - L) / buffer_len
    up to max_len; -1 beyond max_len. Add it to the verifier's reward."""
    if not 0 < buffer_len <= max_len:
        raise ValueError(f"overlong buffer_len={buffer_len} must be in (0, max_len={max_len}]: the penalty "
                         f"ramps over the last buffer_len tokens before max_len. E.g. buffer_len="
                         f"{max(1, max_len // 4)}.")
    length = lengths.float()  # [N]
    start = float(max_len - buffer_len)  # last length without penalty
    ramp = (start - length) / buffer_len  # [N]; in [-1, 0) on (start, max_len]
    out = torch.where(length <= start, torch.zeros_like(length), ramp)  # [N]
    return torch.where(length > max_len, torch.full_like(length, -1.0), out)  # [N]


def _check(rewards: Tensor, group_ids: Tensor) -> None:
    if rewards.dim() != 1 or group_ids.shape != rewards.shape or group_ids.is_floating_point():
        raise ValueError(f"rewards must be 1-D [N] and group_ids an integer tensor of the same shape; "
                         f"got rewards {tuple(rewards.shape)}, group_ids {group_ids.dtype} "
                         f"{tuple(group_ids.shape)}.")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or inf; a verifier must return a finite reward (0 on error).")


def informative_groups(
    rewards: Tensor,  # [N] one scalar reward per sample
    group_ids: Tensor,  # [N] long, samples of one prompt share an id
) -> Tensor:  # [N] bool
    """True for samples whose group's rewards are not all equal (a group of one is not informative)."""
    _check(rewards, group_ids)
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)  # [0]
    r = rewards.float()  # [N]
    _, index = torch.unique(group_ids, return_inverse=True)  # [N] dense group index
    num_groups = int(index.max()) + 1
    gmax = r.new_zeros(num_groups).scatter_reduce_(0, index, r, "amax", include_self=False)  # [G]
    gmin = r.new_zeros(num_groups).scatter_reduce_(0, index, r, "amin", include_self=False)  # [G]
    return (gmax != gmin)[index]  # [N]


def _groups_in_order(group_ids: Tensor) -> list[Tensor]:
    """Member indices of each group, groups in order of first appearance, members ascending."""
    if group_ids.numel() == 0:
        return []
    _, index = torch.unique(group_ids, return_inverse=True)  # [N]
    pos = torch.arange(group_ids.numel(), device=group_ids.device)  # [N]
    first = torch.full((int(index.max()) + 1,), group_ids.numel(), device=group_ids.device)  # [G]
    first.scatter_reduce_(0, index, pos, "amin")  # [G] first position of each group
    return [pos[index == g] for g in torch.argsort(first).tolist()]


@dataclass(frozen=True)
class SamplingDecision:
    """What `DynamicSampler.add` concluded after one generation round."""

    done: bool
    """Stop generating: select the batch with `kept_indices()`."""
    short: bool
    """Done because max_rounds was reached with fewer than target_groups informative groups."""
    fallback: bool
    """Short with no informative group at all: the batch is the last round's (flat) groups."""
    kept_groups: int
    """Informative groups selected so far (at most target_groups)."""
    missing_groups: int
    """target_groups - kept_groups: how many more prompts the next round needs (0 once done)."""


class DynamicSampler:
    """DAPO dynamic sampling bookkeeping for one training step.

    Per generation round, call `add(rewards, group_ids)` with that round's samples (group ids
    need only be unique within the round). Flat groups (all rewards equal) are dropped;
    informative ones are kept in order of appearance until `target_groups` are kept, and any
    further informative ones are dropped as surplus. The step is done when target_groups are
    kept or after `max_rounds` rounds. Exhausted rounds give `short=True` and whatever was
    kept (a smaller batch); with nothing kept at all (`fallback=True`) the batch is the first
    target_groups groups of the LAST round, all flat, so training still runs on a real batch
    whose group advantages are 0 (only KL / entropy terms move the policy).
    `kept_indices()` index the concatenation of every sample passed to `add`, in call order.
    """

    def __init__(self, target_groups: int, max_rounds: int) -> None:
        if target_groups < 1 or max_rounds < 1:
            raise ValueError(f"DynamicSampler(target_groups={target_groups}, max_rounds={max_rounds}): both "
                             f"must be >= 1 (max_rounds=1 disables refilling).")
        self.target_groups = target_groups
        self.max_rounds = max_rounds
        self.rounds = 0
        self.seen_groups = 0
        self._kept: list[Tensor] = []  # global member indices of each kept informative group
        self._last_round: list[Tensor] = []  # global member indices of the last round's groups
        self._offset = 0  # samples added so far
        self._decision: SamplingDecision | None = None

    @property
    def done(self) -> bool:
        return self._decision is not None and self._decision.done

    @property
    def dropped_groups(self) -> int:
        """Groups generated but not in the batch: flat ones plus informative surplus."""
        return self.seen_groups - len(self._selected())

    def add(
        self,
        rewards: Tensor,  # [n] this round's rewards
        group_ids: Tensor,  # [n] long, this round's group ids
    ) -> SamplingDecision:
        """Take one round's scored samples; say whether to stop and how many groups are missing."""
        if self.done:
            raise RuntimeError("DynamicSampler.add after it said done; make a new DynamicSampler per step.")
        informative = informative_groups(rewards, group_ids)  # [n] bool
        local = _groups_in_order(group_ids)  # member indices within this round
        groups = [members + self._offset for members in local]  # into all samples added
        for members, shifted in zip(local, groups):
            if bool(informative[members[0]]) and len(self._kept) < self.target_groups:
                self._kept.append(shifted)
        self.rounds += 1
        self.seen_groups += len(groups)
        self._offset += rewards.numel()
        self._last_round = groups
        kept = len(self._kept)
        done = kept >= self.target_groups or self.rounds >= self.max_rounds
        short = done and kept < self.target_groups
        self._decision = SamplingDecision(
            done=done, short=short, fallback=short and kept == 0, kept_groups=kept,
            missing_groups=0 if done else self.target_groups - kept)
        return self._decision

    def _selected(self) -> list[Tensor]:
        if self._decision is not None and self._decision.fallback:
            return self._last_round[: self.target_groups]
        return self._kept

    def kept_indices(self) -> Tensor:  # [K] long
        """Indices of the batch's samples in the concatenation of all added samples, group by group."""
        selected = self._selected()
        return torch.cat(selected) if selected else torch.zeros(0, dtype=torch.long)  # [K]

    def kept_group_ids(self) -> Tensor:  # [K] long
        """Dense group ids 0..G-1 aligned with kept_indices(), unique across rounds."""
        sizes = torch.tensor([len(m) for m in self._selected()], dtype=torch.long)  # [G]
        return torch.repeat_interleave(torch.arange(sizes.numel()), sizes)  # [K]

    def metrics(self) -> dict[str, float]:
        """rollout/ metrics of this step's sampling."""
        short = self._decision is not None and self._decision.short
        return {
            "rollout/resample_rounds": float(self.rounds),
            "rollout/dropped_groups": float(self.dropped_groups),
            "rollout/resample_short": float(short),
        }
