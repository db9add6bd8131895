import math
import warnings

import pytest
import torch

from sciml.models.atom_features import CGCNN_BLOCKS, CGCNN_FEATURE_SIZE, cgcnn_block_slices, cgcnn_feature_table

pymatgen = pytest.importorskip("pymatgen.core")

#: blocks without data for some element up to Bi: the noble gases He, Ne, Ar have no Pauling value
MISSING = {2: {"electronegativity"}, 10: {"electronegativity"}, 18: {"electronegativity"}}


def _element(symbol):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pymatgen.Element(symbol)


def test_shape_and_padding_row():
    table = cgcnn_feature_table()
    assert CGCNN_FEATURE_SIZE == 92 == sum(size for _, size in CGCNN_BLOCKS)
    assert table.shape == (101, 92) and table.dtype == torch.float32
    assert torch.all(table[0] == 0)
    assert cgcnn_feature_table(max_z=10).shape == (11, 92)
    assert torch.equal(cgcnn_feature_table(max_z=10), table[:11])
    with pytest.raises(ValueError):
        cgcnn_feature_table(max_z=0)


def test_one_hot_per_block_up_to_bismuth():
    table = cgcnn_feature_table(83)
    assert set(table.unique().tolist()) == {0.0, 1.0}
    for z in range(1, 84):
        for name, columns in cgcnn_block_slices().items():
            expected = 0.0 if name in MISSING.get(z, ()) else 1.0
            assert table[z, columns].sum().item() == expected, (z, name)


@pytest.mark.parametrize("symbol", ["Na", "Fe", "O", "La", "Lu", "He"])
def test_group_period_block_match_pymatgen(symbol):
    element = _element(symbol)
    row = cgcnn_feature_table()[element.Z]
    slices = cgcnn_block_slices()
    group = 0 if element.block == "f" else element.group
    assert row[slices["group"]].argmax().item() == group
    assert row[slices["period"]].argmax().item() == element.row - 1
    assert row[slices["block"]].argmax().item() == "spdf".index(element.block)


def test_continuous_bins():
    slices = cgcnn_block_slices()
    table = cgcnn_feature_table()
    fe, na = _element("Fe"), _element("Na")
    # Pauling 1.83 in [0.5 + 3 * 0.35, 0.5 + 4 * 0.35); ln(5.14 eV) = 1.64 in [1.5, 1.7)
    assert table[fe.Z, slices["electronegativity"]].argmax().item() == 3
    assert table[na.Z, slices["first_ionization_energy"]].argmax().item() == math.floor((math.log(5.139) - 1.3) / 0.2)
    # valence electrons: Fe 3d6 4s2, Pd 4d10 5s0, Bi 6s2 6p3, Gd 4f7 5d1 6s2
    for symbol, valence in (("Fe", 8), ("Pd", 10), ("Bi", 5), ("Gd", 10)):
        assert table[_element(symbol).Z, slices["valence_electrons"]].argmax().item() == valence - 1, symbol


def test_rows_distinct_up_to_bismuth():
    table = cgcnn_feature_table(83)[1:]
    assert torch.unique(table, dim=0).shape[0] == 83
