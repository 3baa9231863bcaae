"""The engine: every forward the project runs, for a batch in which each row has its own plan.

A forward embeds new tokens (or continues from given hidden states at some layer), runs a range of
decoder layers and, when asked, the final norm and head. At each layer every row has one action
from its SkipPlan (`ais.model.plan`): run, hard skip, soft blend, skip the attention block, skip the
MLP block, or fill (skip, but write the layer's keys and values). Each layer runs only on the rows
that run it: their states are gathered (`hidden[rows]`), the blocks run, the results are scattered
back (the MoD-style indexing of Router-Tuning's modelling files). A layer no row runs costs nothing.
When every row runs a layer, the layer is called on the whole batch exactly as transformers calls
it, so the empty plan is the plain model bit for bit.

The cache (`Cache`) keeps, per layer, the keys and values of the rows that read that layer, and only
theirs: a row that hard-skips a layer (or its attention block) for a whole request never reads or
writes that layer's cache. When a row's prefill ran a layer that its decoding then skips (the prompt
plan, which is known only after a full prefill, and every plan of the decode-time protocol),
`Batch.set_plans` drops the row from that layer's cache: the cache stays consistent by eviction,
since a dropped row never runs that layer again in the request (setting a plan that would run it
again is an error). Where a row skips a layer for one token only and may run it for the next (the
per-token gate), the layer's keys and values are filled for it, so every later token finds a
complete cache: by running the layer on the row and discarding its output when other rows run the
layer anyway (the same keys and values, and on hardware bound by reading weights, no extra cost),
else by the key and value projections alone.

Positions come from the padding mask as `generate` computes them (a left-padded row has the
positions it has alone), masks from transformers' own `create_causal_mask`. Sub-layer actions and
the block clock run a layer's two blocks by hand, with the operations of the families' decoder
layers (Llama, Qwen2, Mistral, Qwen3 share one layer body), which gives the same bits.
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers.masking_utils import create_causal_mask

from ais.device import synchronize
from ais.model.plan import FILL, NO_SKIP, RUN, SKIP, SKIP_ATTENTION, SKIP_MLP, PlanError, SkipPlan, decoder_layers


class EngineError(ValueError):
    """A request the engine cannot run as asked (a plan that contradicts the cache it built)."""


# ---------------------------------------------------------------- plans for a batch

@dataclass
class LayerRows:
    """One layer's rows by what they do (batch row indices; None = every row)."""

    attention: torch.Tensor | None    # rows whose attention block runs (their keys and values are written)
    mlp: torch.Tensor | None          # rows whose MLP block runs
    fill: torch.Tensor | None         # rows that only write their keys and values
    soft: dict[float, torch.Tensor]   # alpha -> rows whose output is blended with their input
    discard: torch.Tensor | None      # rows run for their keys and values only: their output is dropped
    whole: bool                       # every row runs the plain layer (no gather)
    idle: bool                        # no row does anything at this layer
    ran: torch.Tensor | None = None   # rows whose output is the layer's (run, soft, one block skipped)


def _rows_tensor(rows: list[int], device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def layer_rows(codes: list[int], alphas: list[float], device) -> LayerRows:
    """Group one layer's per-row actions into index tensors."""
    n = len(codes)
    if all(c == RUN for c in codes) and all(a == 1.0 for a in alphas):
        return LayerRows(None, None, None, {}, None, True, False, None)
    ran = [r for r, c in enumerate(codes) if c in (RUN, SKIP_ATTENTION, SKIP_MLP)]
    attention = [r for r, c in enumerate(codes) if c in (RUN, SKIP_MLP)]
    mlp = [r for r, c in enumerate(codes) if c in (RUN, SKIP_ATTENTION)]
    fill = [r for r, c in enumerate(codes) if c == FILL]
    discard = []
    if fill and attention:  # fill by running: the same keys and values, no second pass over the weights
        discard, fill = fill, []
        attention = sorted(attention + discard)
        mlp = sorted(set(mlp) | set(discard))
    soft: dict[float, list[int]] = defaultdict(list)
    for r, (c, a) in enumerate(zip(codes, alphas)):
        if c == RUN and a != 1.0:
            soft[a].append(r)

    def rows(values):
        if len(values) == n:
            return None
        return _rows_tensor(values, device)

    idle = not attention and not mlp and not fill
    return LayerRows(rows(attention) if attention else _rows_tensor([], device),
                     rows(mlp) if mlp else _rows_tensor([], device),
                     _rows_tensor(fill, device) if fill else None,
                     {a: _rows_tensor(v, device) for a, v in soft.items()},
                     _rows_tensor(discard, device) if discard else None, False, idle,
                     None if len(ran) == n else _rows_tensor(ran, device))


class RowPlans:
    """The per-row plans of a batch, grouped per layer once (decoding reuses them every step)."""

    def __init__(self, plans: list[SkipPlan], n_layers: int, device):
        self.plans = [p.validate(n_layers) for p in plans]
        self.n_layers, self.device = n_layers, device
        actions = [[p.action(i) for i in range(n_layers)] for p in self.plans]
        self.codes = [[row[i][0] for row in actions] for i in range(n_layers)]      # layer -> per-row code
        self.alphas = [[row[i][1] for row in actions] for i in range(n_layers)]
        self._layers: dict[int, LayerRows] = {}

    def __len__(self) -> int:
        return len(self.plans)

    def at(self, layer: int) -> LayerRows:
        if layer not in self._layers:
            self._layers[layer] = layer_rows(self.codes[layer], self.alphas[layer], self.device)
        return self._layers[layer]


# ---------------------------------------------------------------- the cache

class _MaskSizes:
    """What `create_causal_mask` asks a cache: the past length of the layer being masked."""

    is_compileable = False

    def __init__(self, past: int):
        self.past = past

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.past

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.past + query_length, 0


class Cache:
    """Keys and values per layer (n_rows x heads x positions x head_dim), for the batch rows that read
    that layer (`rows[i]`: their batch indices, ascending; None until the layer is first written)."""

    def __init__(self, n_layers: int, batch_size: int):
        self.n_layers, self.batch_size = n_layers, batch_size
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.rows: list[torch.Tensor | None] = [None] * n_layers
        self._pending: dict[int, list] = {}
        self._every: torch.Tensor | None = None

    def length(self, layer: int) -> int:
        keys = self.keys[layer]
        return 0 if keys is None else int(keys.shape[-2])

    def holds(self, layer: int) -> list[int]:
        """The batch rows whose keys and values this layer holds."""
        rows = self.rows[layer]
        return [] if rows is None else rows.tolist()

    # -- one layer's write during a forward: begin, update / fill, end
    def begin(self, layer: int, writers: torch.Tensor | None, device) -> None:
        """Rows `writers` (None: every row) append the new positions at `layer`: the first write
        decides which rows the layer holds; later writes must come from exactly those rows."""
        if writers is None:
            if self._every is None or self._every.device != torch.device(device) or len(self._every) != self.batch_size:
                self._every = torch.arange(self.batch_size, device=device)
            writers = self._every
        if self.rows[layer] is None:
            self.rows[layer] = writers
        elif not torch.equal(self.rows[layer], writers):
            held, asked = set(self.holds(layer)), set(writers.tolist())
            if asked - held:
                raise EngineError(
                    f"rows {sorted(asked - held)} write layer {layer}, whose cache holds no keys and values for them (their "
                    "plan skipped it earlier in the request); a plan may drop a layer during a request, not take it back")
            raise EngineError(f"rows {sorted(held - asked)} skip layer {layer} but its cache still holds them: set their "
                              "plans with Batch.set_plans (which drops them) or fill the layer for them")
        self._pending[layer] = []

    def slots(self, layer: int, rows: torch.Tensor | None) -> torch.Tensor | None:
        """Positions of batch rows `rows` within the rows the layer holds (None: all of them)."""
        held = self.rows[layer]
        if rows is None or (len(rows) == len(held) and torch.equal(rows, held)):
            return None
        lookup = torch.full((self.batch_size,), -1, dtype=torch.long, device=held.device)
        lookup[held] = torch.arange(len(held), device=held.device)
        return lookup[rows]

    def update(self, layer: int, slots: torch.Tensor | None, keys, values):
        """Append new keys and values for the rows at `slots` (None: every held row); returns what their
        attention reads (the past of those rows and the new positions)."""
        past_k, past_v = self.keys[layer], self.values[layer]
        if slots is None and not self._pending.get(layer):
            self.keys[layer] = keys if past_k is None else torch.cat([past_k, keys], -2)
            self.values[layer] = values if past_v is None else torch.cat([past_v, values], -2)
            self._pending[layer] = None  # written whole
            return self.keys[layer], self.values[layer]
        self._pending[layer].append((slots, keys, values))
        if past_k is None:
            return keys, values
        if slots is None:
            return torch.cat([past_k, keys], -2), torch.cat([past_v, values], -2)
        return torch.cat([past_k[slots], keys], -2), torch.cat([past_v[slots], values], -2)

    def end(self, layer: int) -> None:
        """Commit the layer's pending writes: every held row has appended the same number of positions."""
        parts = self._pending.pop(layer, None)
        if not parts:
            return
        n_rows = len(self.rows[layer])
        first = parts[0][1]
        shape = (n_rows, first.shape[1], first.shape[2], first.shape[3])
        new_k, new_v = first.new_empty(shape), first.new_empty(shape)
        covered = 0
        for slots, k, v in parts:
            if slots is None:
                new_k, new_v = k, v
                covered = n_rows
            else:
                new_k[slots], new_v[slots] = k, v
                covered += len(slots)
        if covered != n_rows:
            raise EngineError(f"layer {layer}: {covered} of the {n_rows} rows it holds wrote new positions")
        past_k, past_v = self.keys[layer], self.values[layer]
        self.keys[layer] = new_k if past_k is None else torch.cat([past_k, new_k], -2)
        self.values[layer] = new_v if past_v is None else torch.cat([past_v, new_v], -2)

    # -- whole-cache operations
    def copy(self) -> "Cache":
        """A cache that starts where this one is and goes on alone: its per-layer lists are its own,
        the tensors are shared (no operation writes into a cache tensor; each write makes a new one)."""
        if self._pending:
            raise EngineError("a cache is copied between forwards, not during one")
        other = Cache(self.n_layers, self.batch_size)
        other.keys, other.values, other.rows = list(self.keys), list(self.values), list(self.rows)
        return other

    def drop_rows(self, layer: int, rows: list[int]) -> None:
        """Forget some batch rows' keys and values at one layer (they will never read it again)."""
        if self.rows[layer] is None or not rows:
            return
        keep = [j for j, r in enumerate(self.holds(layer)) if r not in set(rows)]
        index = torch.tensor(keep, dtype=torch.long, device=self.rows[layer].device)
        self.rows[layer] = self.rows[layer][index]
        self.keys[layer], self.values[layer] = self.keys[layer][index], self.values[layer][index]

    def truncate(self, length: int, from_layer: int = 0) -> None:
        """Keep the first `length` positions of every layer from `from_layer` on that holds more."""
        for i in range(from_layer, self.n_layers):
            if self.length(i) > length:
                self.keys[i] = self.keys[i][..., :length, :]
                self.values[i] = self.values[i][..., :length, :]

    def repeat_rows(self, repeats: int) -> None:
        """Every batch row becomes `repeats` consecutive rows (row r -> r*repeats .. r*repeats+repeats-1)."""
        for i in range(self.n_layers):
            if self.rows[i] is not None:
                held = self.rows[i]
                self.rows[i] = (held[:, None] * repeats + torch.arange(repeats, device=held.device)).flatten()
                if self.keys[i] is not None:
                    self.keys[i] = self.keys[i].repeat_interleave(repeats, 0)
                    self.values[i] = self.values[i].repeat_interleave(repeats, 0)
        self.batch_size *= repeats


class _LayerView:
    """What one attention call sees as `past_key_values`: its rows of one layer of the cache."""

    def __init__(self, cache: Cache, layer: int, slots: torch.Tensor | None):
        self.cache, self.layer, self.slots = cache, layer, slots

    def update(self, key_states, value_states, layer_idx=None, cache_kwargs=None):
        return self.cache.update(self.layer, self.slots, key_states, value_states)


# ---------------------------------------------------------------- recording and clocks

@dataclass
class Record:
    """What a forward keeps besides its output: `states` — the state entering each layer it runs
    through and the last layer's output (stop - start + 1 tensors, B x q x d); `influence` — each
    row's block influence per layer, 1 - cos(layer input, output) averaged over the row's real new
    positions (B x n_layers, NaN where the row did not run the layer); `outputs` — the output of
    the listed layers."""

    states: bool = False
    influence: bool = False
    outputs: tuple[int, ...] = ()
    kept_states: list = field(default_factory=list)
    kept_influence: dict = field(default_factory=dict)
    kept_outputs: dict = field(default_factory=dict)

    def influence_matrix(self, n_rows: int, n_layers: int, device) -> torch.Tensor:
        out = torch.full((n_rows, n_layers), float("nan"), device=device)
        for layer, (rows, values) in self.kept_influence.items():
            out[rows if rows is not None else slice(None), layer] = values.to(out.device, out.dtype)
        return out


@dataclass
class BlockClock:
    """Seconds per block (device synchronised before each reading): `embed`, `attention@i`,
    `mlp@i`, `head`, `other` (gather, scatter, cache bookkeeping: a step's time minus its blocks)."""

    seconds: dict = field(default_factory=lambda: defaultdict(float))
    calls: dict = field(default_factory=lambda: defaultdict(int))

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        self.calls[name] += 1


class _Timed:
    def __init__(self, clock: BlockClock | None, name: str, device):
        self.clock, self.name, self.device = clock, name, device

    def __enter__(self):
        if self.clock is not None:
            synchronize(self.device)
            self.start = time.perf_counter()

    def __exit__(self, *exc):
        if self.clock is not None:
            synchronize(self.device)
            self.clock.add(self.name, time.perf_counter() - self.start)


# ---------------------------------------------------------------- the per-token gate

@dataclass
class GateState:
    """The per-token gates' state during one forward of one new position per row: each row's gate (one
    gate for every row, or one per row: several gates scored in one pass), whether it has exited, and
    the layers it ran."""

    thresholds: torch.Tensor     # B
    min_layers: torch.Tensor     # B
    skippable: torch.Tensor      # B x L: whether an exited row skips the layer
    exited: torch.Tensor
    depth: torch.Tensor

    @classmethod
    def of(cls, gates, rows: int, n_layers: int, device) -> "GateState":
        gates = list(gates) if isinstance(gates, (list, tuple)) else [gates] * rows
        if len(gates) != rows:
            raise EngineError(f"{len(gates)} gates for {rows} rows: give one gate, or one per row")
        return cls(torch.tensor([g.threshold for g in gates], dtype=torch.float64, device=device),
                   torch.tensor([g.min_layer for g in gates], device=device),
                   torch.tensor([[g.skippable(i) for i in range(n_layers)] for g in gates], device=device),
                   torch.zeros(rows, dtype=torch.bool, device=device), torch.zeros(rows, dtype=torch.long, device=device))


# ---------------------------------------------------------------- one forward's context

@dataclass
class Context:
    """What every layer of one forward needs: positions, rotary embeddings, masks by past length."""

    engine: "Engine"
    q: int
    position_ids: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]
    padding: torch.Tensor | None       # 2D mask over past and new positions (None: no padding)
    mask4d: torch.Tensor | None = None  # a mask given whole (packed sequences)
    token_mask: torch.Tensor | None = None  # B x q, 1 for real new positions
    cache: Cache | None = None
    rollback: bool = False   # a layer every row skips may stay shorter (speculative drafts, rolled back after)
    _masks: dict = field(default_factory=dict)

    def mask(self, past: int, sample: torch.Tensor):
        """The 4-D attention mask for `past` cached positions (None where sdpa's causal flag does)."""
        if self.mask4d is not None:
            if self.mask4d.dtype == torch.bool and self.engine.config._attn_implementation == "eager":
                return torch.zeros(self.mask4d.shape, dtype=sample.dtype, device=sample.device).masked_fill(
                    ~self.mask4d, torch.finfo(sample.dtype).min)  # eager attention adds its mask
            return self.mask4d
        if past not in self._masks:
            padding = self.padding
            if padding is not None and padding.shape[1] != past + self.q:
                raise EngineError(f"a layer holds {past} past positions but the padding mask covers {padding.shape[1]}; "
                                  "with padded rows every layer must hold the whole past")
            self._masks[past] = create_causal_mask(config=self.engine.config, inputs_embeds=sample,
                                                   attention_mask=padding, past_key_values=_MaskSizes(past),
                                                   position_ids=self.position_ids)
        return self._masks[past]

    def repeated(self, repeats: int, cache: Cache | None) -> "Context":
        """The same forward for a batch whose every row became `repeats` consecutive rows."""
        rep = (lambda t: t if t is None or t.shape[0] == 1 else t.repeat_interleave(repeats, 0))
        return Context(self.engine, self.q, rep(self.position_ids), (rep(self.rope[0]), rep(self.rope[1])),
                       rep(self.padding), rep(self.mask4d), rep(self.token_mask), cache, self.rollback)

    def rows_of(self, rows: torch.Tensor | None):
        """(position ids, rotary cos and sin) of some rows."""
        if rows is None:
            return self.position_ids, self.rope
        pick = (lambda t: t if t.shape[0] == 1 else t[rows])
        return pick(self.position_ids), (pick(self.rope[0]), pick(self.rope[1]))


def _positions(padding: torch.Tensor | None, q: int, past: int, batch: int, device) -> torch.Tensor:
    """Position ids of the last q positions: from the padding mask as `generate` computes them, or
    past..past+q-1 without padding."""
    if padding is None:
        return (torch.arange(q, device=device) + past).unsqueeze(0)
    positions = padding.long().cumsum(-1) - 1
    positions = positions.masked_fill(padding == 0, 1)
    return positions[:, -q:]


class Engine:
    """A causal LM's forward by parts, for batches whose rows have their own plans."""

    def __init__(self, model):
        self.model = model
        self.config = model.model.config
        self.layers = decoder_layers(model)
        self.n_layers = len(self.layers)
        self.dispatched = len(set(getattr(model, "hf_device_map", {}).values())) > 1

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    @torch.inference_mode()
    def embed(self, ids: torch.Tensor, clock: BlockClock | None = None) -> torch.Tensor:
        with _Timed(clock, "embed", self.device):
            return self.model.model.embed_tokens(ids)

    @torch.inference_mode()
    def head(self, hidden: torch.Tensor, clock: BlockClock | None = None) -> torch.Tensor:
        """Logits of the given states: the final norm and the head (what LlamaForCausalLM does)."""
        with _Timed(clock, "head", self.device):
            return self.model.lm_head(self.model.model.norm(hidden))

    @torch.inference_mode()
    def last_logits(self, hidden: torch.Tensor, clock: BlockClock | None = None) -> torch.Tensor:
        """Logits of each row's last position (B x vocab), as `logits_to_keep=1` computes them."""
        with _Timed(clock, "head", self.device):
            return self.model.lm_head(self.model.model.norm(hidden)[:, -1:, :])[:, -1, :]

    def plans(self, plans: list[SkipPlan] | RowPlans | None, n_rows: int) -> RowPlans | None:
        """Per-row plans grouped per layer (None where every row runs every layer)."""
        if plans is None or isinstance(plans, RowPlans):
            return plans
        if len(plans) != n_rows:
            raise EngineError(f"{len(plans)} plans for {n_rows} rows: give one plan per row")
        if all(p.is_empty() for p in plans):
            return None
        return RowPlans(list(plans), self.n_layers, self.device)

    # -- contexts
    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> Context:
        """The context of an uncached forward over whole sequences: a 2-D padding mask (left padding),
        or a 4-D mask given whole with its position ids (packed sequences)."""
        rows, q = hidden.shape[:2]
        mask4d = attention_mask if attention_mask is not None and attention_mask.dim() == 4 else None
        padding = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        if padding is not None and bool(padding.all()):
            padding = None
        if position_ids is None:
            position_ids = _positions(padding, q, 0, rows, hidden.device)
        token_mask = padding[:, -q:] if padding is not None else None
        rope = self.model.model.rotary_emb(hidden, position_ids=position_ids)
        return Context(self, q, position_ids, rope, padding, mask4d, token_mask)

    # -- the layer loop
    @torch.inference_mode()
    def run(self, hidden: torch.Tensor, ctx: Context, start: int = 0, stop: int | None = None,
            plans: RowPlans | None = None, gate: GateState | None = None, record: Record | None = None,
            clock: BlockClock | None = None) -> torch.Tensor:
        """Layers start..stop-1 on `hidden` under each row's plan (and the per-token gate)."""
        stop = self.n_layers if stop is None else stop
        if record is not None and record.states and not record.kept_states:
            record.kept_states.append(hidden)
        for i in range(start, stop):
            rows = plans.at(i) if plans is not None else None
            if gate is not None:
                rows = self._gated(i, plans, gate, hidden.device)
            out = self.layer(i, hidden, ctx, rows, clock)
            if gate is not None:
                self._gate_after(i, hidden, out, rows, gate)
            if record is not None:
                self._record(i, hidden, out, rows, ctx, record)
            hidden = out
        return hidden

    def layer(self, i: int, hidden: torch.Tensor, ctx: Context, rows: LayerRows | None,
              clock: BlockClock | None = None) -> torch.Tensor:
        """One decoder layer under its per-row actions."""
        layer, cache = self.layers[i], ctx.cache
        if rows is not None and rows.idle:
            if cache is not None:
                if cache.rows[i] is None:  # reached with no row writing it: it holds none from now on
                    cache.rows[i] = torch.zeros(0, dtype=torch.long, device=hidden.device)
                elif len(cache.rows[i]) and not ctx.rollback:
                    raise EngineError(f"rows {cache.holds(i)} skip layer {i} but its cache still holds them: set their "
                                      "plans with Batch.set_plans (which drops them) or fill the layer for them")
            return hidden
        if rows is None or rows.whole:
            if clock is None:
                return self._whole_layer(i, hidden, ctx, None)
            rows = LayerRows(None, None, None, {}, None, True, False, None)
        elif clock is None and rows.fill is None and _same(rows.attention, rows.mlp):
            return self._whole_layer(i, hidden, ctx, rows)
        if self.dispatched:
            raise EngineError("sub-layer and fill actions need the layer's blocks on one device; this model is "
                              "dispatched over several (model.device: map): run it with whole-layer plans")
        return self._by_blocks(i, hidden, ctx, rows, clock)

    def _whole_layer(self, i: int, hidden: torch.Tensor, ctx: Context, rows: LayerRows | None) -> torch.Tensor:
        """The decoder layer called as transformers calls it, on the rows that run it (all of them, or the
        gathered rows of `rows.attention`), then the soft blends and the fill-by-running rows put back."""
        layer, cache = self.layers[i], ctx.cache
        members = None if rows is None else rows.attention
        x = hidden if members is None else hidden[members]
        past = cache.length(i) if cache is not None else 0
        if cache is not None:
            cache.begin(i, members, hidden.device)
        mask = ctx.mask(past, hidden)
        if mask is not None and members is not None and mask.shape[0] > 1:
            mask = mask[members]
        positions, rope = ctx.rows_of(members)
        y = layer(x, attention_mask=mask, position_ids=positions,
                  past_key_values=_LayerView(cache, i, cache.slots(i, members)) if cache is not None else None,
                  use_cache=cache is not None, position_embeddings=rope)
        if cache is not None:
            cache.end(i)
        if rows is None:
            return y
        out = y if members is None else hidden.index_copy(0, members, y)
        for alpha, soft in rows.soft.items():
            out = out.index_copy(0, soft, alpha * out[soft] + (1.0 - alpha) * hidden[soft])
        if rows.discard is not None:
            out = out.index_copy(0, rows.discard, hidden[rows.discard])
        return out

    def _by_blocks(self, i: int, hidden: torch.Tensor, ctx: Context, rows: LayerRows, clock) -> torch.Tensor:
        """A layer's attention and MLP blocks run separately, each on its own rows (the operations of
        the decoder layer's forward, in its order)."""
        layer, cache = self.layers[i], ctx.cache
        device = hidden.device
        out = hidden
        writers = _union(rows.attention, rows.fill, hidden.shape[0], device)
        past = cache.length(i) if cache is not None else 0
        if cache is not None:
            cache.begin(i, writers, device)
        attention_rows = rows.attention
        if attention_rows is None or len(attention_rows):
            with _Timed(clock, f"attention@{i}", device):
                x = hidden if attention_rows is None else hidden[attention_rows]
                positions, rope = ctx.rows_of(attention_rows)
                mask = ctx.mask(past, hidden)
                if mask is not None and attention_rows is not None and mask.shape[0] > 1:
                    mask = mask[attention_rows]
                view = _LayerView(cache, i, cache.slots(i, attention_rows)) if cache is not None else None
                attended, _ = layer.self_attn(hidden_states=layer.input_layernorm(x), attention_mask=mask,
                                              position_ids=positions, past_key_values=view, use_cache=cache is not None,
                                              position_embeddings=rope)
                x = x + attended
                out = x if attention_rows is None else hidden.index_copy(0, attention_rows, x)
        if rows.fill is not None and len(rows.fill):
            with _Timed(clock, f"fill@{i}", device):
                self._fill(i, hidden, ctx, rows.fill)
        if cache is not None:
            cache.end(i)
        mlp_rows = rows.mlp
        if mlp_rows is None or len(mlp_rows):
            with _Timed(clock, f"mlp@{i}", device):
                x = out if mlp_rows is None else out[mlp_rows]
                x = x + layer.mlp(layer.post_attention_layernorm(x))
                out = x if mlp_rows is None else out.index_copy(0, mlp_rows, x)
        for alpha, members in rows.soft.items():
            blended = alpha * out[members] + (1.0 - alpha) * hidden[members]
            out = out.index_copy(0, members, blended)
        if rows.discard is not None:
            out = out.index_copy(0, rows.discard, hidden[rows.discard])
        return out

    def _fill(self, i: int, hidden: torch.Tensor, ctx: Context, rows: torch.Tensor) -> None:
        """Append some rows' keys and values at layer i, as the layer computes them from its input:
        input norm, key and value projections (the key norm where the family has one), rotary
        embedding of the keys. Nothing else of the layer runs."""
        layer, cache = self.layers[i], ctx.cache
        if cache is None:
            return
        attn = layer.self_attn
        x = layer.input_layernorm(hidden[rows])
        shape = (*x.shape[:-1], -1, attn.head_dim)
        keys = attn.k_proj(x).view(shape)
        if getattr(attn, "k_norm", None) is not None:  # Qwen3
            keys = attn.k_norm(keys)
        keys = keys.transpose(1, 2)
        values = attn.v_proj(x).view(shape).transpose(1, 2)
        _, (cos, sin) = ctx.rows_of(rows)
        rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the family's own rotary embedding
        _, keys = rotate(keys, keys, cos, sin)
        cache.update(i, cache.slots(i, rows), keys, values)

    # -- the per-token gate
    def _gated(self, i: int, plans: RowPlans | None, gate: GateState, device) -> LayerRows:
        codes = list(plans.codes[i]) if plans is not None else [RUN] * len(gate.exited)
        alphas = list(plans.alphas[i]) if plans is not None else [1.0] * len(gate.exited)
        for r in torch.nonzero(gate.exited & gate.skippable[:, i]).flatten().tolist():
            if codes[r] == RUN:
                codes[r] = FILL
        gate.depth += torch.tensor([c in (RUN, SKIP_MLP, SKIP_ATTENTION) for c in codes], device=device)
        return layer_rows(codes, alphas, device)

    def _gate_after(self, i: int, before: torch.Tensor, after: torch.Tensor, rows: LayerRows, gate: GateState) -> None:
        if i + 1 >= self.n_layers:
            return
        checking = gate.min_layers <= i + 1
        if not bool(checking.any()):
            return
        precision = torch.promote_types(before.dtype, torch.float32)
        similarity = torch.cosine_similarity(before[:, -1].to(precision), after[:, -1].to(precision), dim=-1)
        running = torch.ones_like(gate.exited)
        if not rows.whole and rows.ran is not None:
            running = torch.zeros_like(gate.exited)
            running[rows.ran] = True
        gate.exited |= running & checking & (similarity >= gate.thresholds.to(similarity.dtype))

    def _record(self, i: int, before, after, rows: LayerRows | None, ctx: Context, record: Record) -> None:
        if record.states:
            record.kept_states.append(after)
        if i in record.outputs:
            record.kept_outputs[i] = after
        if record.influence:
            precision = torch.promote_types(after.dtype, torch.float32)
            change = 1 - torch.nn.functional.cosine_similarity(before.to(precision), after.to(precision), dim=-1)
            weights = ctx.token_mask.to(change.dtype) if ctx.token_mask is not None else torch.ones_like(change)
            values = (change * weights).sum(1) / weights.sum(1).clamp_min(1e-12)
            ran = None if rows is None or rows.whole else rows.ran
            record.kept_influence[i] = (ran, values if ran is None else values[ran])

    # -- whole forwards
    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, plans=None,
                position_ids: torch.Tensor | None = None, start: int = 0, stop: int | None = None,
                hidden: torch.Tensor | None = None, record: Record | None = None,
                clock: BlockClock | None = None) -> torch.Tensor:
        """An uncached forward of whole sequences (ids B x T, or `hidden` entering layer `start`):
        the last layer's output states (B x T x d, before the final norm)."""
        x = self.embed(ids, clock) if hidden is None else hidden
        ctx = self.context(x, attention_mask, position_ids)
        return self.run(x, ctx, start, stop, self.plans(plans, x.shape[0]), record=record, clock=clock)

    def start(self, attention_mask: torch.Tensor, rollback: bool = False) -> "Batch":
        """A batch of requests to prefill and decode: `attention_mask` is the prompts' padding mask.
        With `rollback` (speculative decoding), a layer every row skips may fall behind the others
        until the caller truncates the cache back."""
        return Batch(self, attention_mask, rollback)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and bool(torch.equal(a, b))


def _union(a: torch.Tensor | None, b: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
    if a is None:
        return None
    if b is None or not len(b):
        return a
    merged = torch.unique(torch.cat([a, b]))
    return None if len(merged) == n else merged


class Batch:
    """Requests in flight: the cache, the padding mask over every position so far, and the rows' plans."""

    def __init__(self, engine: Engine, attention_mask: torch.Tensor, rollback: bool = False):
        self.engine, self.rollback = engine, rollback
        self.rows = attention_mask.shape[0]
        self.cache = Cache(engine.n_layers, self.rows)
        self.padding = None if bool(attention_mask.all()) else attention_mask
        self.length = 0                 # positions fed so far
        self._prompt_mask = attention_mask
        self.plans: RowPlans | None = None

    @torch.inference_mode()
    def feed(self, ids: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
             position_ids: torch.Tensor | None = None, mask4d: torch.Tensor | None = None,
             clock: BlockClock | None = None) -> tuple[torch.Tensor, Context]:
        """New positions (ids B x q, or their embeddings): (embeddings, the context of their forward).
        The first feed is the prompt, under its padding mask; later ones are real tokens. `position_ids`
        and a whole 4-D `mask4d` (bool, True = attend) replace the ones derived from the padding."""
        x = self.engine.embed(ids, clock) if hidden is None else hidden
        q = x.shape[1]
        if self.length == 0 and self._prompt_mask.shape[1] != q:
            raise EngineError(f"the prompt mask has {self._prompt_mask.shape[1]} columns, the first feed {q} positions")
        if self.padding is not None and self.length > 0:
            self.padding = torch.cat([self.padding, self.padding.new_ones((self.rows, q))], 1)
        past = self.length
        self.length += q
        if position_ids is None:
            position_ids = _positions(self.padding, q, past, self.rows, x.device)
        rope = self.engine.model.model.rotary_emb(x, position_ids=position_ids)
        token_mask = self.padding[:, -q:] if self.padding is not None else None
        return x, Context(self.engine, q, position_ids, rope, self.padding, mask4d, token_mask, self.cache, self.rollback)

    @torch.inference_mode()
    def run(self, hidden: torch.Tensor, ctx: Context, start: int = 0, stop: int | None = None, plans=None,
            gate=None, record: Record | None = None, clock: BlockClock | None = None) -> torch.Tensor:
        """Layers start..stop-1 of the fed positions, under `plans` (default: the batch's plans)."""
        plans = self.engine.plans(plans, self.rows) if plans is not None else self.plans
        state = None
        if gate is not None:
            if ctx.q != 1:
                raise EngineError("the per-token gate decides one new position per row at a time")
            state = GateState.of(gate, self.rows, self.engine.n_layers, hidden.device)
        out = self.engine.run(hidden, ctx, start, stop, plans, state, record, clock)
        if state is not None:
            self.depth = state.depth
        return out

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, gate=None, record: Record | None = None, clock: BlockClock | None = None,
             logits: bool = True) -> torch.Tensor:
        """Feed ids (B x q) through every layer under the batch's plans: last-position logits
        (B x vocab), or the last layer's states when `logits` is false."""
        x, ctx = self.feed(ids, clock=clock)
        hidden = self.run(x, ctx, gate=gate, record=record, clock=clock)
        return self.engine.last_logits(hidden, clock) if logits else hidden

    def copy(self) -> "Batch":
        """The same requests in flight, to go on from here without changing this batch (the shared
        prompt of several scoring passes)."""
        other = Batch.__new__(Batch)
        other.__dict__.update(self.__dict__)
        other.cache = self.cache.copy()
        return other

    def set_plans(self, plans: list[SkipPlan] | None) -> None:
        """The rows' plans from now on. A row whose new plan skips a layer's attention (hard skip,
        attention skip) is dropped from that layer's cache: it will not read it again."""
        self.plans = self.engine.plans(plans, self.rows)
        if self.plans is None:
            return
        for i in range(self.engine.n_layers):
            codes = self.plans.codes[i]
            dropped = [r for r in self.cache.holds(i) if codes[r] in (SKIP, SKIP_ATTENTION)]
            self.cache.drop_rows(i, dropped)

    def repeat_rows(self, repeats: int) -> None:
        """Every row becomes `repeats` identical rows (to score several plans after one shared prefill)."""
        self.cache.repeat_rows(repeats)
        if self.padding is not None:
            self.padding = self.padding.repeat_interleave(repeats, 0)
        self._prompt_mask = self._prompt_mask.repeat_interleave(repeats, 0)
        self.rows *= repeats
        if self.plans is not None:
            self.plans = RowPlans([p for p in self.plans.plans for _ in range(repeats)], self.engine.n_layers,
                                  self.engine.device)

    def fan_out(self, repeats: int, hidden: torch.Tensor, ctx: Context, at: int,
                plans: list[SkipPlan]) -> tuple[torch.Tensor, Context]:
        """Score several plans after one shared computation: the fed positions have run layers 0..at-1
        (which no plan touches), and every row now becomes `repeats` rows, the i-th copy of row r
        running `plans[r * repeats + i]` from layer `at` on. Layers below `at` are dropped from the
        cache (the fanned-out batch cannot feed more positions). Returns (the repeated states, their
        context)."""
        for i in range(at):
            self.cache.keys[i] = self.cache.values[i] = None
            self.cache.rows[i] = torch.zeros(0, dtype=torch.long, device=hidden.device)
        self.repeat_rows(repeats)
        self.set_plans(plans)
        return hidden.repeat_interleave(repeats, 0), ctx.repeated(repeats, self.cache)

    def truncate(self, length: int, from_layer: int = 0) -> None:
        """Roll back every layer from `from_layer` on to its first `length` positions (speculative
        decoding's rejected drafts); with from_layer 0, the batch's length too."""
        self.cache.truncate(length, from_layer)
        if from_layer == 0:
            self.length = min(self.length, length)
            if self.padding is not None:
                self.padding = self.padding[:, :length]


__all__ = ["Batch", "BlockClock", "Cache", "Engine", "EngineError", "NO_SKIP", "PlanError", "Record", "RowPlans",
           "SkipPlan"]
