"""Ownership is a pure function: checked here without MPI, for awkward cases."""

import itertools

import pytest

from mgrit_resnet.hierarchy import Hierarchy


def _cases():
    for n_points, levels, factor in itertools.product([2, 3, 5, 13, 14, 38, 65], [1, 2, 3, 4], [2, 3, 4]):
        for n_ranks in sorted({1, 2, 3, 4, 7, n_points - 1, n_points} - {0}):
            if n_ranks <= n_points:
                yield Hierarchy.build(n_points, levels, factor, n_ranks=n_ranks)
        if n_points >= 5:  # uneven explicit blocks, as the adjoint of a layer-parallel network uses
            yield Hierarchy.build(n_points, levels, factor, n_ranks=3, bounds=[0, 1, n_points - 2, n_points])


@pytest.mark.parametrize("h", list(_cases()), ids=str)
def test_ownership_partitions_every_level(h):
    for level in range(h.n_levels):
        owned = [h.owned(level, rank) for rank in range(h.n_ranks)]
        flat = [j for block in owned for j in block]
        assert flat == list(range(h.points(level))), "blocks are contiguous, ordered and cover the level"
        for rank, block in enumerate(owned):
            for j in block:
                assert h.owner(level, j) == rank
            if block:
                left, right = h.left(level, rank), h.right(level, rank)
                assert left == (None if block.start == 0 else h.owner(level, block.start - 1))
                assert right == (None if block.stop == h.points(level) else h.owner(level, block.stop))
                assert left is None or owned[left], "neighbours own points on the level"
            if level + 1 < h.n_levels:
                m = h.factors[level]
                c_points = [j // m for j in block if j % m == 0]
                assert c_points == list(h.owned(level + 1, rank)), "a C-point and its coarse copy share a rank"


def test_fine_blocks_are_balanced():
    h = Hierarchy.build(38, 1, 2, n_ranks=4)
    sizes = [len(h.fine_block(r)) for r in range(4)]
    assert sizes == [9, 10, 9, 10]


def test_ranks_can_own_no_coarse_point():
    h = Hierarchy.build(21, 3, 4, n_ranks=4)
    assert h.points_per_level() == [21, 6, 2]
    assert [len(h.owned(2, r)) for r in range(4)] == [1, 0, 0, 1]
    assert h.left(2, 3) == 0 and h.right(2, 0) == 3
    assert h.left(2, 1) is None and h.right(2, 2) is None


def test_one_point_per_rank():
    h = Hierarchy.build(5, 2, 2, n_ranks=5)
    assert [list(h.owned(0, r)) for r in range(5)] == [[0], [1], [2], [3], [4]]
    assert [list(h.owned(1, r)) for r in range(5)] == [[0], [], [1], [], [2]]


def test_coarsening_stops_at_min_coarse_and_per_level_factors():
    assert Hierarchy.build(101, 10, 2).points_per_level() == [101, 51, 26, 13, 7, 4, 2]
    assert Hierarchy.build(101, 10, 2, min_coarse=5).points_per_level() == [101, 51, 26, 13, 7]
    h = Hierarchy.build(97, 3, [4, 3])
    assert h.factors == (4, 3) and h.points_per_level() == [97, 25, 9]
    assert [h.stride(level) for level in range(3)] == [1, 4, 12]
    assert h.is_c_point(0, 8) and not h.is_c_point(0, 9) and h.is_c_point(2, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(coarsening=1), "coarsening must be an integer >= 2; got 1"),
        (dict(coarsening=[2, 0]), "coarsening must be an integer >= 2; got 0"),
        (dict(coarsening=[2]), r"coarsening must be a single value or a list of at least 2 entries"),
        (dict(levels=0), "levels must be an integer >= 1; got 0"),
        (dict(min_coarse=1), "min_coarse must be an integer >= 2; got 1"),
        (dict(n_ranks=11), r"ranks must be between 1 and the number of time points \(10\)"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, match):
    options = dict(n_points=10, levels=3, coarsening=2) | kwargs
    with pytest.raises(ValueError, match=match):
        Hierarchy.build(**options)


def test_wrong_types_are_type_errors():
    with pytest.raises(TypeError, match="levels must be an integer"):
        Hierarchy.build(10, 2.5, 2)
    with pytest.raises(TypeError, match="coarsening must be an integer"):
        Hierarchy.build(10, 2, "2")


@pytest.mark.parametrize("bounds", [[0, 5], [1, 5, 10], [0, 6, 6, 10], [0, 4, 9]])
def test_bad_bounds_are_rejected(bounds):
    with pytest.raises(ValueError, match="bounds must be 3 increasing fine indices from 0 to 10"):
        Hierarchy.build(10, 2, 2, n_ranks=2, bounds=bounds)
