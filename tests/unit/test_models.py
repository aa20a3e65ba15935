import pytest
import torch
from quantsearch.errors import ModelError
from quantsearch.models import count_params, create, list_models


def test_registry_lists_reference_and_torchvision():
    names = list_models()
    assert {"resnet8", "mobilenetv2-tiny"} <= set(names)
    assert "tv:resnet18" in names


def test_compact_resnet_size_and_shape():
    m = create("resnet8", 10, 1)
    assert 70_000 <= count_params(m) <= 90_000
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_mobilenet_has_depthwise():
    m = create("mobilenetv2-tiny", 7, 3)
    assert any(isinstance(x, torch.nn.Conv2d) and x.groups == x.in_channels > 1 for x in m.modules())
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v2"])
def test_torchvision_adapted(name):
    m = create(name, 5, 1)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 5)


def test_unknown_model_suggests():
    with pytest.raises(ModelError, match="did you mean 'resnet8'"):
        create("resnet9", 10, 1)
    with pytest.raises(ModelError, match="did you mean"):
        create("tv:resnet181", 10, 1)
