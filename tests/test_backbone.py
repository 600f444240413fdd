"""Backbone loading: every path gives the same model; offline and pickle rules hold."""

import shutil
from pathlib import Path

import pytest
import torch

from retouch.backbone import TINY_NAMES, build_tiny, load_backbone
from retouch.errors import RetouchError


def _assert_same(ours, theirs):
    # Bit-identical for SD; SDXL's reloaded projection head rounds differently in the last bits.
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _outputs(backbone):
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        cond = backbone.encode_text(["a photo of a cat"])
        eps = backbone.denoise(latents, 500, cond)
        image = backbone.decode_latents(latents)
    return cond.hidden_states, eps, image


@pytest.mark.parametrize("name", TINY_NAMES)
def test_folder_and_single_file_round_trip(tiny_backbones, tmp_path, name):
    original = tiny_backbones[name]
    folder = original.save(tmp_path / "folder")
    single = original.save(tmp_path / "model.safetensors", single_file=True)
    assert (folder / "model_index.json").is_file()
    assert not list(folder.rglob("*.bin")), "weights must be saved as safetensors"
    expected = _outputs(original)
    for loaded in (load_backbone(folder), load_backbone(single)):
        assert loaded.family == original.family
        assert loaded.schedule.prediction_type == original.schedule.prediction_type
        assert torch.equal(loaded.schedule.alphas_cumprod, original.schedule.alphas_cumprod)
        _assert_same(_outputs(loaded), expected)


def test_tiny_builds_are_deterministic():
    a, b = build_tiny("tiny-sd"), build_tiny("tiny-sd")
    for pa, pb in zip(a.unet.parameters(), b.unet.parameters()):
        assert torch.equal(pa, pb)


def _fake_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay a saved folder out the way huggingface_hub caches a downloaded snapshot."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)


def test_repo_id_loads_from_local_cache_offline(tiny_backbones, tmp_path, monkeypatch):
    folder = tiny_backbones["tiny-sd"].save(tmp_path / "saved")
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "someone/tiny-model", folder)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    loaded = load_backbone("someone/tiny-model", offline=True)
    _assert_same(_outputs(loaded), _outputs(tiny_backbones["tiny-sd"]))


def test_missing_hub_model_offline_fails_at_once_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RetouchError) as info:
        load_backbone("nobody/not-a-model", offline=True)
    message = str(info.value)
    assert "\n" not in message
    assert "nobody/not-a-model" in message and "offline" in message and "local" in message


def test_pickle_weights_need_explicit_opt_in(tiny_backbones, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(RetouchError, match="allow-pickle"):
        load_backbone(ckpt)
    folder = tmp_path / "pickled"
    tiny_backbones["tiny-sd"].as_pipeline().save_pretrained(folder, safe_serialization=False)
    with pytest.raises(RetouchError, match="allow-pickle"):
        load_backbone(folder)
    loaded = load_backbone(folder, allow_pickle=True)
    _assert_same(_outputs(loaded), _outputs(tiny_backbones["tiny-sd"]))


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all"])
def test_corrupt_single_file_is_one_clear_line(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(RetouchError) as info:
        load_backbone(path)
    assert "broken.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_unknown_source_names_the_accepted_forms(tmp_path):
    with pytest.raises(RetouchError, match="diffusers folder"):
        load_backbone(tmp_path / "nothing-here")


def test_sd2_v_prediction_and_override(tiny_backbones, tmp_path):
    assert tiny_backbones["tiny-sd2-v"].schedule.prediction_type == "v_prediction"
    folder = tiny_backbones["tiny-sd"].save(tmp_path / "f")
    assert load_backbone(folder, prediction_type="v_prediction").schedule.prediction_type == "v_prediction"
