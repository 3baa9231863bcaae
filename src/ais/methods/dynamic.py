"""Per-token depth (mode `dynamic`): CALM's hidden-state saturation gate (Schuster et al. 2022), with
its threshold calibrated so that decoded tokens skip the budget's layers on average.

`dynamic` — an exited token skips only the later of the 2n least important layers past the pivot
(pooled importance) and still runs the rest; `dynamic_calm` — CALM's own early exit from every later
layer. The gate itself is `ais.model.plan.DepthGate`; a skipped layer still writes the token's
keys and values (the engine fills them: a complete cache)."""
import torch

from ais.model.plan import DepthGate
from ais.methods import Method, MethodError, register
from ais.model.engine import Record


@torch.inference_mode()
def layer_similarities(engine, references) -> torch.Tensor:
    """cos(layer input, layer output) per decoded, scored token of the references and layer (tokens x L),
    from one full forward of each reference (the first continuation token comes from the prefill and
    is not decoded by the gate)."""
    rows = []
    for ref in references:
        record = Record(states=True)
        engine.forward(ref.batch["input_ids"], ref.batch["attention_mask"], record=record)
        states = record.kept_states
        columns = list(range(ref.columns.start + 1, ref.columns.stop)) or [ref.columns.start]
        scored = ref.scored[:, -len(columns):].bool()
        cos = torch.stack([torch.cosine_similarity(states[i][:, columns].float(), states[i + 1][:, columns].float(),
                                                   dim=-1) for i in range(len(states) - 1)], -1)
        rows.append(cos[scored])
    return torch.cat(rows)


def calibrated_threshold(cos: torch.Tensor, n: int, min_layer: int, candidates) -> float:
    """The threshold at which tokens whose layer similarities are `cos` skip n candidate layers on
    average: a token exits after the first layer i >= min_layer - 1 whose similarity reaches it and
    then skips the candidates past i (read off the full model's states; exits change later tokens'
    caches, so the depth reached where it runs is measured there)."""
    n_layers = cos.shape[1]
    gate = DepthGate(1.0, min_layer, candidates)
    skippable = torch.tensor([gate.skippable(i) for i in range(n_layers)])
    after = skippable.flip(0).cumsum(0).flip(0) - skippable.long()  # candidates past layer i
    may_exit = (torch.arange(n_layers) + 1 >= min_layer) & (torch.arange(n_layers) + 1 < n_layers)

    def mean_skipped(threshold: float) -> float:
        fires = (cos >= threshold) & may_exit
        exit_after = torch.where(fires.any(-1), fires.float().argmax(-1), torch.full((len(cos),), n_layers - 1))
        return float(after[exit_after].float().mean())

    low, high = 0.0, 1.0 + 1e-6  # mean_skipped(low) >= n > mean_skipped(high) = 0
    if mean_skipped(low) < n:
        raise MethodError(f"the dynamic gate cannot skip {n} layers on average with candidates {gate.candidates}")
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_skipped(middle) >= n else (low, middle)
    return round(low, 6)


@register
class DynamicDepth(Method):
    """Per token: exit once a layer's input and output are nearly parallel; skip the later candidates."""

    name = "dynamic"
    per_token = True
    decode_only = True
    calm = False

    def __init__(self, setup):
        super().__init__(setup)
        min_layer = setup.param("dynamic.min_layer", "auto")
        self.min_layer = setup.pivot if min_layer == "auto" else int(min_layer)
        self._cos = None
        self.gates: dict[int, DepthGate] = {}

    def candidates(self, n: int):
        """The 2n least important layers past the pivot (pooled importance); CALM: every later layer."""
        if self.calm:
            return None
        budget = self.setup.budget(min(2 * n, self.setup.n_layers))
        return [i for i in self.setup.lowest(self.setup.pooled_importance(), budget) if i >= self.min_layer]

    def calibrate(self, calibration) -> None:
        self._cos = layer_similarities(calibration.engine, calibration.references)

    def gate(self, budget) -> DepthGate:
        n = budget.layers
        if n not in self.gates:
            if self._cos is None:
                raise MethodError(f"{self.name} must be calibrated before its gate for {n} layers is asked")
            self.gates[n] = DepthGate(calibrated_threshold(self._cos, n, self.min_layer, self.candidates(n)),
                                      self.min_layer, self.candidates(n))
        return self.gates[n]


@register
class CalmEarlyExit(DynamicDepth):
    """CALM's plain early exit: an exited token skips every later layer."""

    name = "dynamic_calm"
    calm = True
    deployable = False
    control = True
