"""Metrics: hand-computed cases, parity with scikit-image / scipy / direct numpy, and the local loaders."""

import math
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage import data
from skimage.metrics import structural_similarity

from retouch.errors import RetouchError
from retouch.metrics import (
    PixelPatchFeatures,
    TransformersCLIPJudge,
    TransformersViTSpatial,
    background_preservation,
    clip_accuracy,
    clip_image_similarity,
    clip_score,
    crop_to_mask,
    extract_features,
    fid,
    frechet_distance,
    kid,
    l1,
    load_lpips,
    psnr,
    self_similarity,
    ssim,
    structure_distance,
)


def _camera_rgb(size: int = 64) -> torch.Tensor:
    """A natural (1, 3, size, size) image from skimage's camera: three differently cropped channels."""
    cam = torch.from_numpy(data.camera()).double() / 255.0
    channels = [cam[200:200 + size, 200:200 + size], cam[210:210 + size, 190:190 + size],
                cam[190:190 + size, 215:215 + size]]
    return torch.stack(channels)[None].float()


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor, **kwargs):
    return structural_similarity(
        a.permute(1, 2, 0).double().numpy(), b.permute(1, 2, 0).double().numpy(), gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1, **kwargs,
    )


# ------------------------------------------------------------------------------------------------
# pixel
# ------------------------------------------------------------------------------------------------
def test_l1_and_psnr_hand_computed():
    a = torch.zeros(1, 3, 2, 2)
    b = torch.zeros(1, 3, 2, 2)
    b[0, 0, 0, 0] = 0.6  # one channel of one pixel
    b[0, :, 1, 1] = 0.3  # all channels of another
    assert l1(a, b).item() == pytest.approx((0.6 + 3 * 0.3) / 12)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # (B, H, W): score only pixel (0, 0)
    assert l1(a, b, mask).item() == pytest.approx(0.6 / 3)
    assert l1(a[0], b[0], mask[0]).shape == (1,)  # single (3, H, W) image and (H, W) mask
    soft = torch.tensor([[[0.5, 0.0], [0.0, 1.0]]])
    assert l1(a, b, soft).item() == pytest.approx((0.5 * 0.6 + 1.0 * 0.9) / (1.5 * 3))

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8
    assert torch.allclose(psnr(x, x + 0.1), torch.full((2,), 20.0), atol=1e-4)  # MSE 0.01 → 20 dB
    assert torch.allclose(psnr(x * 255, x * 255 + 25.5, data_range=255.0), torch.full((2,), 20.0), atol=1e-4)
    y = x.clone()
    y[:, :, :4] += 0.1
    keep = torch.zeros(2, 1, 8, 8)
    keep[:, :, 4:] = 1
    assert torch.isinf(psnr(x, y, mask=keep)).all()  # the changed rows are not scored
    assert torch.isnan(l1(x, y, torch.zeros(2, 8, 8))).all()  # empty mask: nothing to compare


def test_ssim_identity_and_parity_with_skimage_random():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 3, 33, 41, generator=g)
    b = (a + 0.15 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(ssim(a, a), torch.ones(3), atol=1e-6)
    ours = ssim(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(_skimage_ssim(a[i], b[i]), abs=1e-4)


def test_ssim_parity_with_skimage_on_camera():
    source = _camera_rgb(96)
    blurred = torch.nn.functional.avg_pool2d(source, 3, stride=1, padding=1, count_include_pad=False)
    darker = (source**1.5 * 0.9).clamp(0, 1)
    for edited in (blurred, darker):
        assert ssim(source, edited).item() == pytest.approx(_skimage_ssim(source[0], edited[0]), abs=1e-4)


def test_masked_ssim_averages_whole_windows_inside_the_mask():
    source = _camera_rgb(48)
    edited = (source + 0.1 * torch.randn(source.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    mask = torch.zeros(1, 1, 48, 48)
    mask[..., :20] = 1  # score the left 20 columns
    # skimage's full SSIM map (per channel); an 11×11 window centred at (i, j) lies in the image and
    # in the mask for 5 ≤ i ≤ 42 and 5 ≤ j ≤ 14.
    _, full = _skimage_ssim(source[0], edited[0], full=True)
    expected = full.mean(-1)[5:43, 5:15].mean()
    assert ssim(source, edited, mask=mask).item() == pytest.approx(expected, abs=1e-4)
    whole = ssim(source, edited).item()
    assert ssim(source, edited, mask=torch.ones(1, 48, 48)).item() == pytest.approx(whole, abs=1e-6)


def test_background_scores_ignore_the_edit_region():
    source = _camera_rgb(48)
    edit_mask = torch.zeros(1, 1, 48, 48)
    edit_mask[..., 16:32, 16:32] = 1
    g = torch.Generator().manual_seed(3)
    edited = (source + 0.05 * torch.randn(source.shape, generator=g)).clamp(0, 1)
    repainted = torch.where(edit_mask.bool(), torch.rand(source.shape, generator=g), edited)

    seen = []

    def fake_lpips(a, b):
        seen.append((a, b))
        return (a - b).abs().flatten(1).mean(1)

    first = background_preservation(source, edited, edit_mask, lpips_fn=fake_lpips)
    second = background_preservation(source, repainted, edit_mask, lpips_fn=fake_lpips)
    assert set(first) == {"l1", "psnr", "ssim", "lpips"}
    for key in first:
        assert first[key].shape == (1,)
        assert torch.allclose(first[key], second[key]), key
    # the LPIPS input is the edited image with its edit region filled back from the source
    _, filled = seen[-1]
    assert torch.equal(filled[..., 16:32, 16:32], source[..., 16:32, 16:32])
    assert torch.equal(filled[..., :16, :], repainted[..., :16, :])
    assert first["ssim"].item() < 1.0 and first["l1"].item() > 0
    identical = background_preservation(source, torch.where(edit_mask.bool(), 1 - source, source), edit_mask)
    assert set(identical) == {"l1", "psnr", "ssim"}
    assert identical["l1"].item() == 0 and identical["ssim"].item() == pytest.approx(1.0)


def test_load_lpips_without_the_package_names_the_path(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips → ImportError
    path = tmp_path / "lpips_alex.pth"
    with pytest.raises(RetouchError, match="lpips package and local weights at .*lpips_alex.pth"):
        load_lpips(path)


class _FakeLPIPS(torch.nn.Module):
    """Stands in for lpips.LPIPS: records whether inputs arrive in [0, 1] with normalize=True."""

    def __init__(self, net="alex", pretrained=True, pnet_rand=False, verbose=True):
        super().__init__()
        assert not pretrained and pnet_rand  # nothing may be fetched
        self.scale = torch.nn.Parameter(torch.zeros(1))

    def forward(self, in0, in1, normalize=False):
        assert normalize
        return self.scale * (in0 - in1).square().mean(dim=(1, 2, 3), keepdim=True)


def test_load_lpips_reads_a_local_full_state_dict(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=_FakeLPIPS))
    with pytest.raises(RetouchError, match="no such file"):
        load_lpips(tmp_path / "missing.safetensors")
    good = tmp_path / "lpips.safetensors"
    save_file({"scale": torch.tensor([2.0])}, str(good))
    fn = load_lpips(good)
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert torch.allclose(fn(a, b), torch.full((2,), 0.5))
    heads_only = tmp_path / "lin_only.pth"
    torch.save({"lin0.model.1.weight": torch.ones(1)}, heads_only)
    with pytest.raises(RetouchError, match="not a full LPIPS"):
        load_lpips(heads_only)


# ------------------------------------------------------------------------------------------------
# distribution
# ------------------------------------------------------------------------------------------------
def _direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(x, y) = (x·y/d + 1)³ by explicit loops."""
    m, d = x.shape
    k = lambda u, v: (u @ v / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_direct_unbiased_estimator():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.2, size=(12, 5))
    mean, std = kid(x, torch.from_numpy(y), subset_size=12, n_subsets=1)
    assert mean == pytest.approx(_direct_mmd2(x, y), rel=1e-10)
    assert std == 0.0


def test_kid_identical_vs_shifted_and_seeded():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(300, 16))
    same = rng.normal(size=(300, 16))
    shifted = rng.normal(0.5, 1.0, size=(300, 16))
    null, _ = kid(real, same, subset_size=100, n_subsets=50)
    far, far_std = kid(real, shifted, subset_size=100, n_subsets=50)
    assert abs(null) < 0.02 and far > 0.1 and far > 10 * abs(null)
    assert far_std > 0
    assert kid(real, shifted, subset_size=100, n_subsets=5, seed=7) == kid(real, shifted, subset_size=100,
                                                                           n_subsets=5, seed=7)
    assert kid(real, shifted, subset_size=100, n_subsets=5, seed=7) != kid(real, shifted, subset_size=100,
                                                                           n_subsets=5, seed=8)
    # subset_size is capped at the smaller set: with all of a 20-row set the draw is a permutation
    assert kid(real[:20], shifted[:30], subset_size=1000, n_subsets=1)[0] == pytest.approx(
        kid(real[:20], shifted[:30], subset_size=20, n_subsets=1)[0])
    with pytest.raises(RetouchError):
        kid(real[:1], shifted)


def _with_exact_moments(n: int, mean: np.ndarray, var: np.ndarray, seed: int) -> np.ndarray:
    """n samples whose sample mean is ``mean`` and sample (ddof=1) covariance is diag(var), exactly."""
    z = np.random.default_rng(seed).normal(size=(n, mean.size))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten: cov(z) = I
    return z * np.sqrt(var) + mean


def test_fid_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 1.0, 0.5])
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    x, y = _with_exact_moments(200, mu1, s1, 0), _with_exact_moments(150, mu2, s2, 1)
    assert fid(x, torch.from_numpy(y)) == pytest.approx(closed, rel=1e-9)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    s1, s2 = a.T @ a / 40, b.T @ b / 40 + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # pytorch-fid's formula
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)
    # singular covariances (N < D): still real and ≥ 0 up to round-off
    x = rng.normal(size=(5, 32))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)


def test_extract_features_batches_and_iterables():
    images = torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(4))

    def extractor(batch):
        assert batch.shape[0] <= 4
        return batch.mean(dim=(2, 3))

    feats = extract_features(extractor, images, batch_size=4)
    assert torch.allclose(feats, images.mean(dim=(2, 3)))
    assert torch.allclose(extract_features(extractor, [images[:3], images[3:6]]), feats[:6])


# ------------------------------------------------------------------------------------------------
# semantic
# ------------------------------------------------------------------------------------------------
class ColourJudge:
    """Image embedding = mean colour; text embedding = the colour word it contains."""

    WORDS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "grey": (1.0, 1.0, 1.0)}

    def __init__(self, image_size=None):
        if image_size is not None:
            self.image_size = image_size

    def encode_images(self, images):
        return images.mean(dim=(2, 3))

    def encode_texts(self, texts):
        return torch.tensor([next(v for w, v in self.WORDS.items() if w in t) for t in texts])


def _solid(*rgb, size=8):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_clip_score_and_accuracy_with_a_colour_judge():
    judge = ColourJudge()
    images = torch.cat([_solid(1, 0, 0), _solid(0.6, 0.8, 0), _solid(0, 0, 1)])
    assert torch.allclose(clip_score(judge, images, "a red thing"), torch.tensor([100.0, 60.0, 0.0]))
    assert torch.allclose(clip_score(judge, images, ["red", "green", "blue"]), torch.tensor([100.0, 80.0, 100.0]))
    assert torch.allclose(clip_score(judge, images[:1], "grey"), torch.tensor([100 / math.sqrt(3)]))
    acc = clip_accuracy(judge, images, source_texts=["a blue cat"] * 3, target_texts=["a red cat"] * 3)
    assert acc.tolist() == [1.0, 1.0, 0.0]
    # a tie is not a success: a blue image has cosine 0 to both "red" and "green"
    assert clip_accuracy(judge, images[2:], "red", "green").tolist() == [0.0]


def test_clip_image_similarity_whole_and_region():
    judge = ColourJudge()
    red, blue = _solid(1, 0, 0), _solid(0, 0, 1)
    assert torch.allclose(clip_image_similarity(judge, torch.cat([red, blue]), torch.cat([red, red])),
                          torch.tensor([1.0, 0.0]))
    # a green image with a red 4×4 square: whole image is mostly green, the masked region pure red
    scene = _solid(0, 1, 0, size=16)
    scene[..., 4:8, 10:14] = torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:8, 10:14] = 1
    assert clip_image_similarity(judge, scene, red).item() == pytest.approx(1 / math.sqrt(1 + 15**2), abs=1e-6)
    assert clip_image_similarity(judge, scene, red, mask=mask).item() == pytest.approx(1.0, abs=1e-6)
    # a 4×8 region is padded to 8×8 with grey (no resize at image_size 8): mean colour (.75, .25, .25)
    mask[:, 4:8, 6:14] = 1
    scene[..., 4:8, 6:14] = torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)
    crop = crop_to_mask(scene, mask, size=8)
    assert crop.shape == (1, 3, 8, 8)
    assert torch.allclose(crop[0, :, 2:6].mean(dim=(1, 2)), torch.tensor([1.0, 0, 0]))
    assert torch.allclose(crop[0, :, :2], torch.full((3, 2, 8), 0.5))
    expected = 0.75 / math.sqrt(0.75**2 + 2 * 0.25**2)
    assert clip_image_similarity(ColourJudge(image_size=8), scene, red, mask=mask).item() == pytest.approx(expected)
    # an empty mask keeps the whole image
    assert torch.allclose(crop_to_mask(scene, torch.zeros(1, 16, 16), size=16), scene)


@pytest.fixture(scope="module")
def tiny_model_dirs(tmp_path_factory):
    """A tiny CLIP (model + processor) folder and a tiny ViT folder, saved as safetensors."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, ViTConfig, ViTModel

    from retouch.tokenizer import TINY_CORPUS, build_clip_tokenizer

    root = tmp_path_factory.mktemp("metric_models")
    tokenizer = build_clip_tokenizer(TINY_CORPUS, vocab_size=1000, directory=root / "tokenizer")
    torch.manual_seed(0)
    text = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                  num_hidden_layers=2)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root / "clip")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "clip")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**vision), add_pooling_layer=False).save_pretrained(root / "vit")
    return root


def test_transformers_clip_judge_loads_a_local_folder(tiny_model_dirs):
    judge = TransformersCLIPJudge(tiny_model_dirs / "clip")
    assert judge.image_size == 32
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(5))
    assert judge.encode_images(images).shape == (2, 16)
    assert judge.encode_texts(["a red circle on sand", "a photo of a cat"]).shape == (2, 16)
    # the judge's embedding is the model's on the processor's pixels
    pixels = judge.processor(images=[images[0].permute(1, 2, 0).numpy()], do_rescale=False,
                             return_tensors="pt")["pixel_values"]
    direct = judge.model.get_image_features(pixel_values=pixels)
    direct = direct if isinstance(direct, torch.Tensor) else direct.pooler_output
    assert torch.allclose(judge.encode_images(images[:1]), direct, atol=1e-5)
    score = clip_score(judge, images, "a photo of a cat")
    assert score.shape == (2,) and ((score >= 0) & (score <= 100)).all()
    assert set(clip_accuracy(judge, images, "a cat", "a dog").tolist()) <= {0.0, 1.0}


def test_a_vision_only_folder_is_not_a_judge(tiny_model_dirs):
    with pytest.raises(RetouchError, match="vit"):
        TransformersCLIPJudge(tiny_model_dirs / "vit")


def test_missing_local_weights_raise_with_the_path(tmp_path):
    missing = tmp_path / "no-such-clip"
    with pytest.raises(RetouchError, match="no-such-clip"):
        TransformersCLIPJudge(missing)
    with pytest.raises(RetouchError, match="no-such-vit"):
        TransformersViTSpatial(tmp_path / "no-such-vit")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(RetouchError, match="empty-folder"):
        TransformersCLIPJudge(empty)
    with pytest.raises(RetouchError, match="empty-folder"):
        TransformersViTSpatial(empty)


# ------------------------------------------------------------------------------------------------
# structure
# ------------------------------------------------------------------------------------------------
def test_structure_distance_with_pixel_patches():
    features = PixelPatchFeatures(patch=8)
    image = _camera_rgb(64) * 0.8 + 0.05  # headroom: a brightness shift must not clip
    assert features(image).shape == (1, 64, 192)
    assert structure_distance(features, image, image).item() == 0.0
    assert structure_distance(features, image, image + 0.1).item() < 1e-10  # patch centring
    assert structure_distance(features, image, image * 1.2).item() < 1e-10  # cosine
    rearranged = torch.cat([image[..., 32:, :], image[..., :32, :]], dim=-2)
    assert structure_distance(features, image, rearranged).item() > 0.01
    # the documented normalisation: ‖S(a) − S(b)‖_F² / N²
    s_a, s_b = self_similarity(features(image)), self_similarity(features(rearranged))
    frobenius2 = torch.linalg.matrix_norm(s_a - s_b) ** 2 / 64**2
    assert structure_distance(features, image, rearranged).item() == pytest.approx(frobenius2.item(), rel=1e-5)


def test_self_similarity_hand_computed():
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    s = self_similarity(tokens)
    r = 1 / math.sqrt(2)
    assert torch.allclose(s, torch.tensor([[[1.0, r, 0.0], [r, 1.0, 0.0], [0.0, 0.0, 0.0]]]), atol=1e-6)


def test_transformers_vit_spatial_facets(tiny_model_dirs):
    keys = TransformersViTSpatial(tiny_model_dirs / "vit", facet="key")
    tokens = TransformersViTSpatial(tiny_model_dirs / "vit", facet="token")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    pixels = (images - keys.mean) / keys.std
    with torch.no_grad():
        out = keys.model(pixel_values=pixels, output_hidden_states=True)
        # transformers ≥ 5 names them layers[i].attention.k_proj, older versions encoder.layer[i]…key
        last = keys.model.layers[-1] if hasattr(keys.model, "layers") else keys.model.encoder.layer[-1]
        key_proj = getattr(last.attention, "k_proj", None) or last.attention.attention.key
        expected_keys = key_proj(last.layernorm_before(out.hidden_states[-2]))[:, 1:]
    assert keys(images).shape == (2, 16, 32)
    assert torch.allclose(keys(images), expected_keys, atol=1e-5)
    assert torch.allclose(tokens(images), out.last_hidden_state[:, 1:], atol=1e-5)
    assert torch.allclose(structure_distance(keys, images, images), torch.zeros(2))
    assert (structure_distance(keys, images, images.flip(-1)) > 0).all()
    # a CLIP folder works too, through its vision tower
    assert TransformersViTSpatial(tiny_model_dirs / "clip")(images).shape == (2, 16, 32)
    with pytest.raises(RetouchError, match="facet"):
        TransformersViTSpatial(tiny_model_dirs / "vit", facet="query")


def test_control_measures_follow_the_operators_they_read():
    """Gradient energy falls with motion blur and rises with unsharp masking; flat-region high-frequency energy
    rises with grain size; the colour distance to a reference is zero after Reinhard transfer's statistics match."""
    import torch
    from skimage import data as skdata

    from retouch.effects import motion_blur, reinhard_color_transfer, unsharp_mask
    from retouch.imageio import resize_image
    from retouch.metrics.control import (colour_statistics_distance, flat_high_frequency_energy, gradient_energy,
                                         monotone)

    photo = resize_image(skdata.astronaut().astype(np.float32) / 255.0, (64, 64))
    as_batch = lambda arrays: torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()  # noqa: E731
    blurred = [float(gradient_energy(as_batch([motion_blur(photo, b, angle=30.0)]))) for b in (0.0, 0.3, 0.6, 0.9)]
    assert monotone(blurred, "down") and not monotone(blurred, "up")
    sharpened = [float(gradient_energy(as_batch([unsharp_mask(photo, a, 0.0)]))) for a in (1.0, 2.0, 3.0)]
    assert monotone(sharpened, "up")
    # the shipped model's λ curve (docs/multitask.md): rising by 1e-5 on 1.8e-2 is flat, not monotone
    assert not monotone([0.01784, 0.017845, 0.01785], "up") and monotone([0.01784, 0.017845, 0.01785], "up", 0.0)
    source = as_batch([photo])
    rng = np.random.default_rng(0)
    noisy = [np.clip(photo + rng.normal(0, s, photo.shape), 0, 1).astype(np.float32) for s in (0.0, 0.02, 0.05)]
    assert monotone([float(flat_high_frequency_energy(as_batch([n]), source)) for n in noisy], "up")
    reference = skdata.coffee().astype(np.float32)[::8, ::8][:64, :64] / 255.0
    moved = reinhard_color_transfer(photo, reference)
    before = float(colour_statistics_distance(source, as_batch([reference])))
    after = float(colour_statistics_distance(as_batch([moved]), as_batch([reference])))
    assert after < 0.5 * before
