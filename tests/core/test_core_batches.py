"""One way in for data: ArrayDataset, torch Datasets of (x, y), DataLoaders and (x, y) tensors."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mlsafety.core import ArrayDataset, InputError, as_array_dataset, iter_batches

X = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
Y = torch.arange(10) % 3


class PairList(Dataset):
    """A map-style Dataset that is not a TensorDataset: items are (x, label int)."""

    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, i: int):
        return X[i], int(Y[i])


FORMS = {
    "array-dataset": lambda: ArrayDataset(X, Y),
    "tensor-dataset": lambda: TensorDataset(X, Y),
    "map-style-dataset": PairList,
    "data-loader": lambda: DataLoader(TensorDataset(X, Y), batch_size=3),
    "tensors": lambda: (X, Y),
    "numpy-arrays": lambda: (X.numpy(), Y.numpy()),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_gives_the_same_dataset(form):
    data = as_array_dataset(FORMS[form]())
    assert isinstance(data, ArrayDataset)
    assert torch.equal(data.x, X) and torch.equal(data.y, Y) and data.y.dtype == torch.long


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_streams_the_same_batches(form):
    batches = list(iter_batches(FORMS[form](), batch_size=4))
    assert torch.equal(torch.cat([b[0] for b in batches]), X)
    assert torch.equal(torch.cat([b[1] for b in batches]), Y)


def test_an_array_dataset_is_returned_as_is():
    data = ArrayDataset(X, Y, name="digits")
    assert as_array_dataset(data) is data


def test_unlabelled_data_only_where_labels_are_optional():
    assert torch.equal(as_array_dataset(X, labelled=False).y, torch.full((10,), -1))
    assert torch.equal(as_array_dataset(DataLoader(X, batch_size=4), labelled=False).x, X)
    with pytest.raises(InputError, match="without labels"):
        as_array_dataset(X)
    with pytest.raises(InputError, match="no labels"):
        as_array_dataset(TensorDataset(X))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("data.npz", "cannot read data of type str"),
        ({"x": X, "y": Y}, "cannot read data of type dict"),
        (3, "cannot read data of type int"),
        ([1, 2, 3], "batches must be tensors x or pairs"),
        ((X, Y.float() + 0.4), "labels must be integers"),
        ((X, Y[:5]), "10 inputs but labels of shape"),
        ((X[:0], Y[:0]), "empty"),
        (TensorDataset((X * 255).to(torch.uint8), Y), "uint8"),
    ],
)
def test_anything_else_is_refused_with_one_line(bad, message):
    with pytest.raises(InputError, match=message) as info:
        as_array_dataset(bad, what="clean")
    assert "\n" not in str(info.value) and str(info.value).startswith("clean")


def test_a_dataset_of_non_tensors_names_the_fix():
    class Strings(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return "image.png", 0

    with pytest.raises(InputError, match="inputs are str values; make them tensors"):
        as_array_dataset(Strings())

    class Images(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return object(), 0

    with pytest.raises(InputError, match="inputs are object values; make them tensors"):
        as_array_dataset(Images())


def test_labels_of_shape_n_by_1_are_flattened():
    assert torch.equal(as_array_dataset((X, Y[:, None])).y, Y)
    assert torch.equal(as_array_dataset((X, np.asarray(Y)[:, None])).y, Y)
