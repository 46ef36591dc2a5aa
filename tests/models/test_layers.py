import pytest

from emi.core.errors import ConfigError
from emi.models import layers


def test_resolve_layers_forms():
    assert layers.resolve_layers("all", 4) == [0, 1, 2, 3]
    assert layers.resolve_layers(None, 3) == [0, 1, 2]
    assert layers.resolve_layers("1,3", 4) == [1, 3]
    assert layers.resolve_layers("1-2", 4) == [1, 2]
    assert layers.resolve_layers(-1, 4) == [3]
    assert layers.resolve_layers("-1", 4) == [3]
    assert layers.resolve_layers([2, 0, 2], 4) == [0, 2]


@pytest.mark.parametrize("bad", [4, "7", "-5", "x", "1-z", [0, 9]])
def test_resolve_layers_out_of_range_is_clear(bad):
    with pytest.raises(ConfigError, match="layer"):
        layers.resolve_layers(bad, 4)


def test_tl_hook_names():
    assert layers.tl_hook_name(3) == "blocks.3.hook_resid_post"
    assert layers.tl_hook_name(0, "mlp") == "blocks.0.hook_mlp_out"
    with pytest.raises(ConfigError, match="unknown site"):
        layers.tl_hook_name(0, "resid_pre_typo")


def test_output_tensor_handles_tensor_and_tuple():
    import torch

    t = torch.ones(2, 3, 4)
    assert layers.output_tensor(t) is t
    assert layers.output_tensor((t, None)) is t
    new = torch.zeros_like(t)
    assert layers.replace_output(t, new) is new
    out = layers.replace_output((t, "w"), new)
    assert out[0] is new and out[1] == "w"
