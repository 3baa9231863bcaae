"""Sub-layer plans: attention and MLP blocks skipped separately (Draft&Verify and KnapSpec choose at
this granularity; He et al. 2024 find attention blocks far more redundant than MLP blocks).

Calibration scores every block past the pivot alone, skipped on the calibration prompts (decode-time
top-1 agreement with the full model, ties by KL), and takes each block's measured decode cost from
the engine's block clock. A plan then takes blocks in order of least harm while their summed cost
fits the budget, whose unit is one layer's measured cost: so a budget of n layers buys whatever set of
attention and MLP blocks costs what n whole layers cost, not n blocks."""
from ais.methods import Method, MethodError, register
from ais.model.plan import SkipPlan


@register
class SubLayerPlan(Method):
    """The least harmful attention and MLP blocks whose measured cost fits the budget."""

    name = "sublayer"
    deployable = False  # its ranking comes from calibration, which the evaluation stages run

    def __init__(self, setup):
        super().__init__(setup)
        self.ranking: list[tuple[str, int]] = []   # (block, layer), least harmful first
        self.harm: dict[tuple[str, int], float] = {}
        self.costs: dict[tuple[str, int], float] = {}

    def calibrate(self, calibration) -> None:
        blocks = [(kind, i) for i in self.setup.skippable() for kind in ("attention", "mlp")]
        plans = [SkipPlan.make(**{kind: [i]}) for kind, i in blocks]
        scores = calibration.score(plans)
        layer_cost = calibration.costs.get("layer")
        if not layer_cost:
            raise MethodError("the sub-layer plan needs the engine's measured block costs (calibration.costs)")
        for block, result in zip(blocks, scores):
            kind, i = block
            self.harm[block] = 1.0 - result["top1"]
            self.costs[block] = calibration.costs[f"{kind}@{i}"] / layer_cost
        self.ranking = sorted(blocks, key=lambda b: (self.harm[b], scores[blocks.index(b)]["kl"], b[1], b[0]))

    def plan(self, request, budget):
        if not self.ranking:
            raise MethodError("the sub-layer plan must be calibrated first")
        spend = float(budget.cost if budget.cost is not None else budget.layers or 0)
        chosen = {"attention": [], "mlp": []}
        for kind, i in self.ranking:
            if self.costs[(kind, i)] <= spend + 1e-9:
                chosen[kind].append(i)
                spend -= self.costs[(kind, i)]
        both = set(chosen["attention"]) & set(chosen["mlp"])  # both blocks of one layer: the layer hard-skipped
        return SkipPlan.make(hard=both, attention=set(chosen["attention"]) - both, mlp=set(chosen["mlp"]) - both)

    def cost_of(self, plan: SkipPlan) -> float:
        """A plan's cost in layers, from the measured block costs."""
        total = sum(self.costs[("attention", i)] + self.costs[("mlp", i)] for i in plan.hard)
        return total + sum(self.costs[("attention", i)] for i in plan.attention) + sum(self.costs[("mlp", i)] for i in plan.mlp)
