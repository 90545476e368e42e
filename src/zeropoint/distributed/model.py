"""Models across ranks: static calibration synchronised before convert, QAT attached to the ranks.

Static PTQ (`zp.quantize_static`, `zp.calibrate_model`, `zp.calibrating` + `zp.convert`): each
rank feeds its shard; `zp.convert` calls `sync_calibration`, which — when a process group is
initialised with more than one rank, and never otherwise — runs `sync_model`: the activation
observers of every rank reduced (`zeropoint.distributed.sync`), after checking that the ranks
prepared the same layers with the same schemes and observers and hold the same weights. Every
rank then converts to the same model. ``convert`` is therefore collective under a process group:
call it on every rank (or `detach` the model to calibrate and convert on one rank alone).

QAT (`zp.prepare_qat`): `attach` hands the model's batch-dependent parts a `RankGroup`
(`zeropoint.distributed.training`); ``prepare_qat`` does it when a process group is initialised,
before the example batch initialises the quantizers.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from zeropoint.distributed.fingerprint import model_fingerprint
from zeropoint.distributed.ranks import Channel, is_distributed
from zeropoint.distributed.sync import SyncStats, named_observers, sync_observers, synchronize
from zeropoint.distributed.training import RankGroup, global_batch, local_observer, transfer

# The model-level functions import the simulation modules and workflows when called: those import
# this package (zp.convert and zp.prepare_qat call into it), and `import zeropoint.distributed`
# stays light.

#: Attribute of a prepared model's root: its RankGroup, or LOCAL after `detach`.
ATTR = "_zeropoint_ranks"
LOCAL = "local"


def _prepared(model: nn.Module) -> None:
    from zeropoint.workflows.graph import state_of

    state_of(model)  # raises for a model zeropoint did not prepare


def _activation_quantizers(model: nn.Module) -> dict[str, Any]:
    """The activation FakeQuants of a prepared model, by module name."""
    from zeropoint.workflows.static import activation_quantizers

    wanted = {id(q) for q in activation_quantizers(model)}
    return {name: m for name, m in model.named_modules() if id(m) in wanted}


def _group_of(model: nn.Module) -> tuple[bool, Any]:
    """(synchronise?, group) for a prepared model."""
    ranks = model.__dict__.get(ATTR)
    if ranks == LOCAL:
        return False, None
    group = ranks.group if isinstance(ranks, RankGroup) else None
    return is_distributed(group), group


def sync_model(model: nn.Module, group: Any = None) -> SyncStats:
    """Reduce the activation observers of a prepared model (those in mode "observe") over the
    ranks of ``group`` (None: the default group) in place — afterwards ``zp.convert`` gives the
    same model on every rank, the one a single process calibrated on all the shards would give.
    Before anything is reduced, the ranks compare their quantizers (names, modes, schemes,
    observers and options) and the digests of their parameters and buffers; a difference raises
    `RankMismatchError` on every rank, naming it. Collective (see `sync_observers`)."""
    _prepared(model)
    quantizers = _activation_quantizers(model)
    named = named_observers({n: q.observer for n, q in quantizers.items() if q.mode == "observe"})
    layers = {n: {"mode": q.mode, "scheme": repr(q.scheme)} for n, q in quantizers.items()}
    extra: dict[str, dict[str, Any]] = {"quantizer": layers, "weights": model_fingerprint(model)}
    return synchronize(named, Channel(group), "zeropoint.distributed.sync_model", extra)


def sync_calibration(model: nn.Module) -> SyncStats | None:
    """What `zp.convert` runs first: `sync_model` when the model calibrates in observe mode and
    a process group with more than one rank is initialised (the model's attached group, else
    the default one) — unless the model was `detach`-ed. Returns None when nothing ran."""
    enabled, group = _group_of(model)
    if not enabled:
        return None
    if not any(q.mode == "observe" for q in _activation_quantizers(model).values()):
        return None
    return sync_model(model, group)


def attach(model: nn.Module, group: Any = None) -> nn.Module:
    """Reduce ``model``'s statistics over ``group`` (None: the default group): static
    calibration at ``zp.convert``, and for QAT every training step's batch-norm statistics,
    "learn"-mode observers and the first batch of the learnable activation quantizers
    (`zeropoint.distributed.training`). ``zp.prepare_qat`` attaches new models itself when a
    process group is initialised; call this for another group. Attach before the first
    training step: observers that already hold data are synchronised first (collective)."""
    from zeropoint.nn.convbn import QuantConvBn2d
    from zeropoint.nn.learnable import _Learnable

    _prepared(model)
    ranks = RankGroup(group)
    model.__dict__[ATTR] = ranks
    for m in model.modules():
        if isinstance(m, QuantConvBn2d) or (isinstance(m, _Learnable) and not m.weight):
            m.rank_group = ranks
    learning = {n: q for n, q in _activation_quantizers(model).items() if q.mode == "learn"}
    held = {n: q.observer for n, q in learning.items() if q.observer.num_batches}
    if held and is_distributed(group):
        sync_observers(held, group)
    for q in learning.values():
        new = global_batch(q.observer, ranks)
        transfer(q.observer, new)
        q.observer = new
    return model


def detach(model: nn.Module) -> nn.Module:
    """Make ``model`` compute locally again: ``zp.convert`` no longer synchronises its
    calibration, and QAT statistics are this rank's own."""
    _prepared(model)
    model.__dict__[ATTR] = LOCAL
    for m in model.modules():
        m.__dict__.pop("rank_group", None)
    for q in _activation_quantizers(model).values():
        q.observer = local_observer(q.observer)
    return model
