"""perturb: the seeded evaluation plan (which image gets which perturbation, jitter factors, noise seeds)
for train / val / test -> data/perturb/plan.npz. FGM's gradient is taken later, per model."""
import numpy as np

from robust_cifar.conditions import KINDS, SPLITS
from robust_cifar.data.split import load_split_indices
from robust_cifar.params import load_params
from robust_cifar.perturbations.perturb import PerturbSettings, make_plan, save_plans
from robust_cifar.stage import run_stage
from stages import paths


def main(argv: list[str]) -> None:
    paths.no_arguments(argv)
    params = load_params()
    settings, seed = PerturbSettings.from_params(params, with_fgm=False), params.seed("plan")
    split = load_split_indices(paths.SPLIT)
    sizes = {name: len(split[name]) for name in SPLITS}
    # one seed per split, derived from the plan seed, so a split's plan does not depend on the others' sizes
    plans = {name: make_plan(size, settings, int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
             for index, (name, size) in enumerate(sizes.items())}
    save_plans(plans, paths.PLAN, seed)
    for name, plan in plans.items():
        shares = ", ".join(f"{kind} {share:.1%}" for kind, share in zip(KINDS, plan.gates.mean(0)))
        print(f"{name}: {len(plan.gates)} images; {shares}")


if __name__ == "__main__":
    run_stage(main)
