"""Routing decisions of one forward pass, owned by that call (never by the model), so one model serves many threads.

The model's forward opens a `routing_scope` holding the frame-level padding mask; block routers (forward pre-hooks)
and module routers write their decisions into it, and the expert layers read them back. The scope lives in a
`contextvars.ContextVar`, so two threads (or two interleaved calls) each see their own state and nothing has to be
threaded through the backbone's forward signatures. Records are keyed by router name, so an activation-checkpointing
recompute overwrites instead of duplicating them.
"""

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from .router import RouterOutput


@dataclass
class RoutingState:
    """What the routers of one forward pass share: the padding mask in, their decisions out."""

    frame_mask: torch.Tensor | None  # (B, T) bool, True = real frame; None = no padding
    expert_mask: torch.Tensor | None = None  # (E,) bool, experts the routers may choose; None = all
    sample_lengths: torch.Tensor | None = None  # (B,) real samples per clip when some clip is padded; else None
    records: dict[str, RouterOutput] = field(default_factory=dict)


_CURRENT_ROUTING: ContextVar[RoutingState | None] = ContextVar("molex_routing_state", default=None)
_EXPERTS_DISABLED: ContextVar[bool] = ContextVar("molex_experts_disabled", default=False)


@contextlib.contextmanager
def routing_scope(
    frame_mask: torch.Tensor | None,
    expert_mask: torch.Tensor | None = None,
    sample_lengths: torch.Tensor | None = None,
) -> Iterator[RoutingState]:
    """Open a fresh routing state for the calls made inside this block (in this thread / context only).
    `sample_lengths` lets the padding-aware backbone modules (`padding_invariance.py`) ignore the padding."""
    state = RoutingState(frame_mask, expert_mask, sample_lengths)
    token = _CURRENT_ROUTING.set(state)
    try:
        yield state
    finally:
        _CURRENT_ROUTING.reset(token)


@contextlib.contextmanager
def experts_disabled() -> Iterator[None]:
    """Inside this block (this thread / context only), expert layers add no delta: the frozen backbone alone runs."""
    token = _EXPERTS_DISABLED.set(True)
    try:
        yield
    finally:
        _EXPERTS_DISABLED.reset(token)


def experts_are_disabled() -> bool:
    return _EXPERTS_DISABLED.get()


def active_routing_state() -> RoutingState | None:
    """The state of the forward pass running in this context, or None outside the model's forward."""
    return _CURRENT_ROUTING.get()


def current_routing_state() -> RoutingState:
    """The routing state of the forward pass running in this context."""
    state = _CURRENT_ROUTING.get()
    if state is None:
        raise RuntimeError(
            "MoLEx experts were called outside a routing scope. Call the model (MoLExForAudioClassification), or "
            "wrap direct backbone calls in `with routing_scope(frame_mask):`."
        )
    return state


def carry_routing_state(checkpoint_function: Callable) -> Callable:
    """Wrap an activation-checkpointing function so that the recompute in backward (run after the forward's scope
    has closed, possibly in autograd's own thread) sees the routing state of the forward it replays."""

    def checkpoint_with_routing_state(function: Callable, *args, **kwargs):
        state = _CURRENT_ROUTING.get()
        return checkpoint_function(functools.partial(_run_in_state, state, function), *args, **kwargs)

    return checkpoint_with_routing_state


def _run_in_state(state: RoutingState | None, function: Callable, *args, **kwargs):
    token = _CURRENT_ROUTING.set(state)
    try:
        return function(*args, **kwargs)
    finally:
        _CURRENT_ROUTING.reset(token)
