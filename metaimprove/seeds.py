"""Every seed derived from a run's own seed, one named function per kind, so that no two streams collide.

Collection seeds its runs 0, 1, 2, ...; everything else draws from ranges those never reach.
"""

STRIDE = 1_000_003
"""a prime wider than any seed a run is given: ``STRIDE * seed + offset`` keeps each run's streams apart"""
FRESH_INIT_BASE = 100_000
"""apply's fresh starts: initialization seeds no collection uses"""
RELABEL_INIT_BASE = 500_000
"""relabeling's fresh starts: apart from collection's and from apply's"""


def fresh_init(seed: int) -> int:
    """The initialization seed of apply's fresh θ⁰ for run ``seed``."""
    return FRESH_INIT_BASE + seed


def evaluation(seed: int) -> int:
    """The seed of run ``seed``'s evaluation episodes, shared by every method."""
    return STRIDE * seed + 17


def selection(seed: int) -> int:
    """The seed of run ``seed``'s ``transferred`` selection episodes (never the evaluation's)."""
    return STRIDE * seed + 29


def verification(seed: int) -> int:
    """The seed of run ``seed``'s ``operator_guarded`` verification episodes (never the evaluation's)."""
    return STRIDE * seed + 41


def fallback(seed: int, n: int) -> int:
    """The seed of the teacher step behind run ``seed``'s ``n``-th guarded fallback."""
    return evaluation(seed) + 1 + n


def warmup_collector(seed: int, n_envs: int) -> int:
    """The seed of run ``seed``'s collector of ``n_envs``-wide warm-up batches."""
    return STRIDE * seed + 100_000 + n_envs


def relabel_init(seed: int, j: int) -> int:
    """The initialization seed of relabeling's fresh start beside dataset run ``j``."""
    return RELABEL_INIT_BASE + seed + j


def relabel_run(seed: int, j: int, fresh: bool) -> int:
    """The seed of relabeling's run from dataset run ``j``'s θ⁰ (or, ``fresh``, from its fresh start)."""
    return seed + 2 * j + int(fresh)


def meta_inner(seed: int, i: int) -> int:
    """The seed of inner loop ``i`` of a meta-training seeded ``seed`` (apart from apply's streams)."""
    return STRIDE * seed + 300_000 + i


def outcome_generation(seed: int, generation: int) -> int:
    """The seed of generation ``generation`` of an outcome training seeded ``seed``: its tasks, their run seeds and
    its perturbations."""
    return STRIDE * seed + 400_000 + generation


def visit(seed: int, step: int) -> int:
    """The seed of the teacher run from the policy an operator run of seed ``seed`` reached after ``step`` steps."""
    return 1_000 * seed + step


def env_reset(seed: int, n_envs: int, env: int) -> int:
    """The first reset seed of env ``env`` of a collector of ``n_envs`` envs seeded ``seed``."""
    return seed * n_envs + env
