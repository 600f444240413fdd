"""PIXELS (progressive exemplar editing) and its two baselines, on the tiny seeded backbones.

The loop is checked against independent re-implementations written out here from the paper's
Algorithms 1 and 2, not against numbers it produced itself.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from retouch.edit_maps import blur_map, grow_mask, linear_ramp_map
from retouch.errors import RetouchError
from retouch.methods import get_method
from retouch.methods.exemplar_baselines import BaselineConfig, exemplar_sdedit_latents
from retouch.methods.exemplar_inputs import ExemplarConfig, fit_exemplar, load_exemplar_inputs
from retouch.methods.pixels import (
    THRESHOLDS,
    PixelsConfig,
    pixels_edit,
    pixels_latents,
    threshold_values,
)
from retouch.methods.sdedit import SDEditConfig
from retouch.sampling import add_noise, ddim_sample, ddim_step, guided_denoiser, img2img_timesteps, previous_timestep
from helpers import run_cli

SIZE = 32  # pixels; the tiny VAE halves it, so latents are 16 × 16


def _image(seed, size=SIZE):
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _block_map(values: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """A pixel map constant on each factor × factor block, so its area average is exact."""
    return values.repeat_interleave(factor, 0).repeat_interleave(factor, 1)


def _noise(latents, seed):
    return torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed), dtype=latents.dtype)


# ---------------------------------------------------------------------------------------------
# Threshold functions (appendix §5)
# ---------------------------------------------------------------------------------------------
def test_thresholds_have_the_papers_endpoints_shapes_and_areas():
    n = 50
    i = torch.arange(n, dtype=torch.float64)
    expected = {  # the appendix's definitions, evaluated independently in float64
        "linear": i / n, "quadratic": (i / n) ** 2, "cubic": (i / n) ** 3,
        "log": torch.log1p(i) / math.log1p(n), "sigmoid": torch.sigmoid(i / n * 6 - 3),
    }
    for name, values in expected.items():
        tau = threshold_values(name, n)
        assert tau.shape == (n,) and torch.allclose(tau.double(), values, atol=1e-6), name
        assert (tau[1:] > tau[:-1]).all() and tau[-1] < 1, name  # strictly increasing, never reaches 1
    assert threshold_values("linear", n)[0] == 0 and threshold_values("log", n)[0] == 0
    assert threshold_values("sigmoid", n)[0] == pytest.approx(1 / (1 + math.e ** 3))

    # Areas under the curve over [0, 1] (Fig. 11): Riemann sums with many steps.
    big = 100_000
    area = {name: threshold_values(name, big).double().mean().item() for name in THRESHOLDS}
    assert area["linear"] == pytest.approx(1 / 2, abs=1e-4)
    assert area["quadratic"] == pytest.approx(1 / 3, abs=1e-4)
    assert area["cubic"] == pytest.approx(1 / 4, abs=1e-4)
    assert area["sigmoid"] == pytest.approx(1 / 2, abs=1e-4)  # point-symmetric about ½
    assert area["log"] == pytest.approx((1 + big) / big - 1 / math.log1p(big), abs=1e-4)
    # "Log … more AUC (more hallucination)", "Cubic … more Area Above Curve (more adherence)".
    assert area["log"] > area["sigmoid"] > area["quadratic"] > area["cubic"]


def test_custom_threshold_functions_are_checked():
    assert torch.equal(threshold_values(lambda n: torch.zeros(n), 4), torch.zeros(4))
    for bad in (lambda n: torch.zeros(n + 1), lambda n: torch.linspace(1, 0, n), lambda n: torch.full((n,), 2.0)):
        with pytest.raises(RetouchError):
            threshold_values(bad, 4)
    with pytest.raises(RetouchError, match="unknown threshold"):
        threshold_values("exponential", 4)


# ---------------------------------------------------------------------------------------------
# The progressive loop
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd2-v", "tiny-sdxl"])
def test_zero_maps_give_exactly_the_source_path(tiny_backbones, name):
    """m = 0 everywhere: every step copies the re-noised source, so only the last DDIM step remains."""
    backbone = tiny_backbones[name]
    config = PixelsConfig(num_steps=10, strength=0.6, seed=5)
    source = _image(0)
    ours = pixels_latents(backbone, source, [_image(1)], [torch.zeros(SIZE, SIZE)], config)

    schedule = backbone.schedule
    with torch.no_grad():
        z = backbone.encode_images(source)
        t = img2img_timesteps(schedule, config.num_steps, config.strength)[-1]
        x = add_noise(z, _noise(z, config.seed), schedule.alpha(t))
        out = backbone.denoise(x, t, backbone.encode_text([""]))
        reference = ddim_step(schedule, x, out, t, previous_timestep(schedule, t, config.num_steps))
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("threshold", sorted(THRESHOLDS))
def test_larger_map_values_start_earlier(tiny_backbones, monkeypatch, threshold):
    """Per latent cell, the steps fed the re-noised source form a prefix whose length falls with m."""
    backbone = tiny_backbones["tiny-sd"]
    values = torch.tensor([j / 16 for j in range(15)] + [1.0])  # one per latent column, 0 … 1, dyadic: exact
    edit_map = _block_map(values.expand(16, 16))
    config = PixelsConfig(num_steps=12, strength=0.75, seed=2, threshold=threshold)
    source = _image(3)

    seen = []
    denoise = backbone.denoise
    monkeypatch.setattr(backbone, "denoise", lambda x, t, cond: (seen.append((x.clone(), t)), denoise(x, t, cond))[1])
    pixels_latents(backbone, source, [_image(4)], [edit_map], config)

    with torch.no_grad():
        z = backbone.encode_images(source)
    noise = _noise(z, config.seed)
    from_source = torch.stack([(x == add_noise(z, noise, backbone.schedule.alpha(t))).all(1)[0] for x, t in seen])
    n = len(seen)
    starts = from_source.sum(0)  # (16, 16) steps fed from the source
    prefix = torch.arange(n)[:, None, None] < starts
    assert torch.equal(from_source, prefix), "a cell went back to the source after being handed to the denoiser"
    starts = starts[0]  # columns: increasing map value
    assert (starts[1:] <= starts[:-1]).all() and starts[0] == n and starts[-1] == 0
    tau = threshold_values(threshold, n)
    assert torch.equal(starts, ((1 - values)[:, None] > tau).sum(1))  # Algorithm 1 line 14, per column


def _algorithm_2(backbone, source, exemplar1, exemplar2, map1, map2, config):
    """Algorithm 2 of the paper, line by line (μ = 1 − m; masks as float 0/1 products)."""
    schedule = backbone.schedule
    timesteps = img2img_timesteps(schedule, config.num_steps, config.strength)
    T = len(timesteps)
    tau = torch.arange(T) / T  # linear threshold
    cond = backbone.encode_text([config.prompt])
    uncond = backbone.encode_text([config.negative_prompt])
    denoise = guided_denoiser(backbone.denoise, cond, uncond, config.guidance_scale)
    z1, z2, z3 = (backbone.encode_images(x) for x in (source, exemplar1, exemplar2))   # lines 4-6
    mu1d, mu2d = (1 - F.avg_pool2d(m[None, None], 2) for m in (map1, map2))           # lines 7-8
    noise = _noise(z1, config.seed)
    z1T, z2T, z3T = (add_noise(z, noise, schedule.alpha(timesteps[0])) for z in (z1, z2, z3))  # 9-11
    mask1, mask2 = (mu1d > tau[0]).float(), (mu2d > tau[0]).float()                  # 12-13
    z_mix = (z1T * mask1 + z2T * (1 - mask1)) * mask2 + z3T * (1 - mask2)            # 14
    for i, t in enumerate(timesteps):
        if i > 0:                                                                    # 16-20
            z1t = add_noise(z1, noise, schedule.alpha(t))
            mask1, mask2 = (mu1d > tau[i]).float(), (mu2d > tau[i]).float()
            z_mix = (z1t * mask1 + z_mix * (1 - mask1)) * mask2 + z_mix * (1 - mask2)
        z_mix = ddim_step(schedule, z_mix, denoise(z_mix, t), t, previous_timestep(schedule, t, config.num_steps))
    return z_mix


def test_two_exemplars_in_one_pass_match_algorithm_2(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    ramp = torch.arange(16, dtype=torch.float32).div(15).mul(8).round().div(8)  # dyadic values: exact averages
    map1 = _block_map(ramp.expand(16, 16))            # left → right
    map2 = _block_map(ramp.flip(0)[:, None].expand(16, 16))  # bottom → top; overlaps map1 top-right
    config = PixelsConfig(prompt="a red cube", negative_prompt="blurry", guidance_scale=5.0, num_steps=10,
                          strength=0.8, seed=7)
    source, exemplar1, exemplar2 = _image(10), _image(11), _image(12)
    ours = pixels_latents(backbone, source, [exemplar1, exemplar2], [map1, map2], config)
    with torch.no_grad():
        theirs = _algorithm_2(backbone, source, exemplar1, exemplar2, map1, map2, config)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # Precedence: where both maps are 1 the later exemplar was pasted, so swapping them changes the result.
    swapped = pixels_latents(backbone, source, [exemplar2, exemplar1], [map2, map1], config)
    assert not torch.allclose(ours, swapped)


def test_iterative_mode(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    source, exemplars = _image(20), [_image(21), _image(22)]
    maps = [_block_map(torch.rand(16, 16, generator=torch.Generator().manual_seed(k))) for k in (0, 1)]
    single = PixelsConfig(num_steps=8, strength=0.7, seed=1)
    iterative = PixelsConfig(num_steps=8, strength=0.7, seed=1, iterative=True)
    one_pass = pixels_latents(backbone, source, exemplars[:1], maps[:1], single)
    assert torch.equal(pixels_latents(backbone, source, exemplars[:1], maps[:1], iterative), one_pass)
    # Two exemplars iteratively = the second edit applied by hand to the first's decoded result.
    by_hand = pixels_latents(backbone, pixels_edit(backbone, source, exemplars[:1], maps[:1], single).clamp(-1, 1),
                             exemplars[1:], maps[1:], single)
    assert torch.equal(pixels_latents(backbone, source, exemplars, maps, iterative), by_hand)


@pytest.mark.parametrize("name", ["tiny-sd2-v", "tiny-sdxl"])
def test_v_prediction_and_sdxl_run_end_to_end(tiny_backbones, name):
    backbone = tiny_backbones[name]
    maps = [_block_map((torch.arange(16) >= 8).float().expand(16, 16)), torch.full((SIZE, SIZE), 0.25)]
    config = PixelsConfig(prompt="a photo", negative_prompt="ugly", num_steps=6, strength=0.8, threshold="sigmoid")
    steps = []
    images = get_method("pixels").edit(backbone, _image(30), config, progress=lambda i, t, x: steps.append(i),
                                       exemplars=[_image(31)[0], _image(32)], maps=maps)
    assert images.shape == (1, 3, SIZE, SIZE) and torch.isfinite(images).all()
    assert steps == list(range(int(6 * 0.8)))


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------
def test_latent_surgery_is_sdedit_of_the_pasted_latent(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    fields = dict(prompt="a cat", num_steps=10, strength=0.6, guidance_scale=7.5, seed=3)
    source, exemplar = _image(40), _image(41)
    surgery = get_method("latent-surgery").edit(backbone, source, BaselineConfig(**fields), exemplars=[exemplar],
                                                maps=[torch.zeros(SIZE, SIZE)])
    sdedit = get_method("sdedit").edit(backbone, source, SDEditConfig(**fields))
    torch.testing.assert_close(surgery, sdedit, rtol=0, atol=1e-5)
    # A full map pastes the whole exemplar: the same as SDEdit of the exemplar.
    surgery = get_method("latent-surgery").edit(backbone, source, BaselineConfig(**fields), exemplars=[exemplar],
                                                maps=[torch.full((SIZE, SIZE), 0.6)])
    torch.testing.assert_close(surgery, get_method("sdedit").edit(backbone, exemplar, SDEditConfig(**fields)),
                               rtol=0, atol=1e-5)


def test_latent_surgery_can_paste_only_the_cells_pixels_pastes(tiny_backbones):
    """--paste full binarises where the latent map is 1 (PIXELS' Algorithm 1 line 9-10 region), not > ½: on a
    map of 1 in one block and 0.6 elsewhere it pastes that block only, as the default does on the 0/1 map."""
    backbone = tiny_backbones["tiny-sd"]
    source, exemplar = _image(44), _image(45)
    core = torch.zeros(16, 16)
    core[4:10, 2:8] = 1.0
    ramp = torch.where(core > 0, core, torch.full_like(core, 0.6))
    fields = dict(num_steps=8, strength=0.6, seed=5)

    def surgery(edit_map, paste):
        return exemplar_sdedit_latents(backbone, source, [exemplar], [_block_map(edit_map)],
                                       BaselineConfig(paste=paste, **fields), scale_noise=False)

    torch.testing.assert_close(surgery(ramp, "full"), surgery(core, "half"), rtol=0, atol=0)
    assert not torch.allclose(surgery(ramp, "half"), surgery(core, "half"), atol=1e-3)  # ½ takes the 0.6 cells too
    with pytest.raises(RetouchError, match="paste"):
        BaselineConfig(paste="most", **fields).validate()


def test_scaled_noise_multiplies_the_noise_by_the_map(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    config = BaselineConfig(num_steps=10, strength=0.6, seed=4)
    source, exemplar = _image(50), _image(51)
    edit_map = _block_map(torch.rand(16, 16, generator=torch.Generator().manual_seed(2)))
    ours = exemplar_sdedit_latents(backbone, source, [exemplar], [edit_map], config, scale_noise=True)
    schedule = backbone.schedule
    timesteps = img2img_timesteps(schedule, config.num_steps, config.strength)
    with torch.no_grad():
        z, z_ex = backbone.encode_images(source), backbone.encode_images(exemplar)
        m = F.avg_pool2d(edit_map[None, None], 2)
        start = add_noise(torch.where(m > 0.5, z_ex, z), m * _noise(z, config.seed), schedule.alpha(timesteps[0]))
        cond = backbone.encode_text([""])
        theirs = ddim_sample(lambda x, t, c: backbone.denoise(x, t, cond), schedule, start, timesteps, None,
                             num_steps=config.num_steps)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    ones = [torch.ones(SIZE, SIZE)]  # m = 1: nothing is scaled, so it is latent surgery
    torch.testing.assert_close(exemplar_sdedit_latents(backbone, source, [exemplar], ones, config, scale_noise=True),
                               exemplar_sdedit_latents(backbone, source, [exemplar], ones, config, scale_noise=False))


# ---------------------------------------------------------------------------------------------
# Edit maps, exemplar fitting and input checks
# ---------------------------------------------------------------------------------------------
def test_map_helpers():
    mask = np.zeros((21, 21), dtype=bool)
    mask[10, 10] = True
    grown = grow_mask(mask, 2)
    assert grown.dtype == np.float32 and grown.sum() == 13  # the Euclidean disc of radius 2
    ramp = linear_ramp_map(mask, 4)
    assert ramp[10, 10] == 1 and ramp[10, 12] == pytest.approx(0.5) and ramp[10, 14] == 0 and ramp[10, 17] == 0
    assert ramp[12, 12] == pytest.approx(1 - math.sqrt(8) / 4)
    blurred = blur_map(grown, 1.5)
    assert 0 <= blurred.min() and blurred.max() <= 1 and blurred.sum() == pytest.approx(13, rel=1e-4)
    assert np.array_equal(blur_map(grown, 0), grown)
    assert not linear_ramp_map(np.zeros((4, 4)), 2).any()
    with pytest.raises(RetouchError):
        grow_mask(mask, -1)


def test_fit_exemplar_policies():
    exemplar = np.random.default_rng(0).random((10, 6, 3)).astype(np.float32)
    assert fit_exemplar(exemplar, (16, 12)).shape == (12, 16, 3)
    centred = fit_exemplar(exemplar, (16, 12), "center")
    assert np.array_equal(centred[1:11, 5:11], exemplar) and centred[0].max() == 0 and centred[:, :5].max() == 0
    cropped = fit_exemplar(exemplar, (4, 4), "center")
    assert np.array_equal(cropped, exemplar[3:7, 1:5])


def test_bad_library_inputs_raise_one_line_errors(tiny_backbones):
    backbone, source, exemplar = tiny_backbones["tiny-sd"], _image(0), _image(1)
    config = PixelsConfig(num_steps=4)
    nan_map = torch.zeros(SIZE, SIZE)
    nan_map[0, 0] = float("nan")
    cases = {
        "2 exemplars but 1 edit maps": ([exemplar, exemplar], [torch.zeros(SIZE, SIZE)]),
        "NaN": ([exemplar], [nan_map]),
        "must lie in [0, 1]": ([exemplar], [torch.full((SIZE, SIZE), 255.0)]),
        "resize it first": ([exemplar], [torch.zeros(SIZE, SIZE + 4)]),
        "fit it first": ([_image(1, SIZE + 4)], [torch.zeros(SIZE, SIZE)]),
        "at least one exemplar": ([], []),
    }
    for message, (exemplars, maps) in cases.items():
        with pytest.raises(RetouchError, match=message.replace("[", r"\[").replace("]", r"\]")):
            pixels_edit(backbone, source, exemplars, maps, config)
    with pytest.raises(RetouchError, match="runs no step"):
        pixels_edit(backbone, source, [exemplar], [torch.zeros(SIZE, SIZE)], PixelsConfig(num_steps=4, strength=0.2))


def test_prepare_loads_fits_and_shapes_maps(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "ex.png")
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[8:16, 10:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    config = ExemplarConfig(exemplar=(str(tmp_path / "ex.png"),), map=(str(tmp_path / "mask.png"),),
                            map_grow=1, map_ramp=3, map_blur=1)
    loaded = load_exemplar_inputs(config, (32, 24), "cpu", torch.float32)
    assert loaded["exemplars"][0].shape == (1, 3, 24, 32)
    expected = blur_map(linear_ramp_map(grow_mask(mask / 255.0, 1), 3), 1)
    np.testing.assert_allclose(loaded["maps"][0].numpy(), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def test_cli_pixels_with_two_exemplars_and_bad_inputs(tmp_path, capsys):
    rng = np.random.default_rng(1)
    paths = {}
    for name, shape in (("src", (40, 48, 3)), ("a", (40, 48, 3)), ("b", (20, 20, 3))):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(paths[name])
    ramp = np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (20, 1))  # half size: resized by the map policy
    Image.fromarray(ramp).save(tmp_path / "a_map.png")
    Image.fromarray(ramp.T.copy()).save(tmp_path / "b_map.png")
    pair_a = ["--exemplar", paths["a"], "--map", tmp_path / "a_map.png"]
    pair_b = ["--exemplar", paths["b"], "--map", tmp_path / "b_map.png"]
    common = ["edit", paths["src"], "--method", "pixels", "--num-steps", "4", "--strength", "0.8", "--seed", "3"]

    out = tmp_path / "out.png"
    code, stdout, err = run_cli(common + ["-o", out, *pair_a, *pair_b, "--threshold", "log", "--prompt", "a dog",
                                       "--exemplar-fit", "center", "--map-blur", "1"], capsys)
    assert code == 0, err
    assert np.asarray(Image.open(out)).shape == (40, 48, 3) and "pixels" in stdout

    Image.fromarray(np.full((40, 48), np.nan, dtype=np.float32), mode="F").save(tmp_path / "nan.tiff")
    (tmp_path / "text.png").write_text("not an image")
    bad = [
        (pair_a + ["--exemplar", paths["b"]], "2 --exemplar but 1 --map"),
        (["--exemplar", paths["a"], "--map", tmp_path / "nan.tiff"], "NaN"),
        (["--exemplar", paths["a"], "--map", tmp_path / "text.png"], "not a recognised image format"),
        (pair_a + ["--threshold", "exp"], "unknown threshold"),
        (["--exemplar", paths["a"], "--map", tmp_path / "missing.png"], "missing.png"),
        ([], "needs at least one --exemplar"),
    ]
    for extra, message in bad:
        code, _, err = run_cli(common + ["-o", tmp_path / "bad.png", *extra], capsys)
        assert code == 1 and message in err and err.count("\n") == 1, err
    code, _, err = run_cli(["edit", paths["src"], "-o", tmp_path / "bad.png", "--method", "sdedit", *pair_a], capsys)
    assert code == 1 and "--exemplar, --map not used by method 'sdedit'" in err
    code, _, err = run_cli(common + ["-o", paths["a"], *pair_a], capsys)  # never overwrite an exemplar
    assert code == 1 and "refusing to overwrite input" in err
    assert not (tmp_path / "bad.png").exists()
