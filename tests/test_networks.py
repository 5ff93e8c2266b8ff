"""Networks: named hidden layers, uint8 handled inside, CleanRL's initialisation and sizes, read
as the env family's observation layout says."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from agents.networks import Network, NetworkConfig, make_spec
from envs import atari, minigrid
from envs.info import ObservationLayout

NET = OmegaConf.structured(NetworkConfig)


def build(space, heads=None, layout=None):
    if heads is None:
        heads = {"policy": 4, "value": 1}
    return Network(make_spec(NET, space, heads, {"policy": 0.01, "value": 1.0}, layout))


def test_nature_cnn_matches_cleanrl_shapes_and_size():
    net = build(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), layout=atari.LAYOUT)
    assert list(net.hidden_layers()) == ["conv1", "conv2", "conv3", "fc1"]
    assert net.hidden_layers()["fc1"].in_features == 3136
    # CleanRL's ppo_atari Agent with 4 actions: 1,686,693 parameters.
    assert sum(p.numel() for p in net.parameters()) == 1_686_693
    out, feats = net(torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8), True)
    assert out["policy"].shape == (2, 4) and out["value"].shape == (2, 1)
    assert feats["conv1"].shape == (2, 32, 20, 20) and feats["fc1"].shape == (2, 512)


def test_minigrid_cnn_takes_hwc_uint8():
    net = build(gym.spaces.Box(0, 255, (7, 7, 3), np.uint8), {"q": 7}, minigrid.LAYOUT)
    obs = torch.randint(0, 11, (5, 7, 7, 3), dtype=torch.uint8)
    out = net(obs)
    assert out["q"].shape == (5, 7)
    manual = net(obs.float())  # the uint8 conversion is only a dtype change
    torch.testing.assert_close(out["q"], manual["q"])


def test_orthogonal_init_with_head_gains():
    net = build(gym.spaces.Box(-1, 1, (6,), np.float32))
    w = net.heads["policy"].weight  # (4, 64): rows orthonormal, scaled by the gain 0.01
    torch.testing.assert_close(w @ w.T, 0.01**2 * torch.eye(4), atol=1e-6, rtol=0)
    assert torch.all(net.heads["value"].bias == 0)
    assert list(net.hidden_layers()) == ["fc1", "fc2"]


def test_width_multiplier_scales_hidden_layers():
    space = gym.spaces.Box(-1, 1, (6,), np.float32)
    wide = Network(make_spec(OmegaConf.merge(NET, {"width": 2.0}), space, {"q": 3}))
    assert [m.out_features for m in wide.hidden_layers().values()] == [128, 128]


@pytest.mark.parametrize("channels_last, in_channels", [(True, 10), (False, 9)])
def test_the_layout_not_the_shape_says_where_the_channels_are(channels_last, in_channels):
    layout = ObservationLayout(image=True, channels_last=channels_last, arch="minigrid_cnn",
                               input_scale=0.5)
    net = build(gym.spaces.Box(0, 1, (9, 9, 10), np.float32), layout=layout)
    assert net.hidden_layers()["conv1"].in_channels == in_channels
    assert net.spec.input_scale == 0.5 and net.spec.channels_last_input is channels_last


def test_a_cnn_needs_an_image_layout():
    vector = ObservationLayout(image=False, arch="mlp")
    with pytest.raises(ValueError, match=r"network.arch=minigrid_cnn needs image observations, "
                                         r"got shape \(7, 7, 3\)"):
        make_spec(OmegaConf.merge(NET, {"arch": "minigrid_cnn"}),
                  gym.spaces.Box(0, 10, (7, 7, 3), np.uint8), {"q": 3}, layout=vector)
