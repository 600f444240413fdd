"""Pre-encoded training shards: exact contents, resumable builds, refusal to mix, deterministic batches."""

import json

import numpy as np
import pytest
import torch

from retouch.data.latent_shards import LatentShards, build_latent_shards
from retouch.errors import RetouchError
from retouch.world import World, attributes


@pytest.fixture(scope="module")
def parts():
    from retouch.backbone import load_backbone
    from retouch.train.mini import mini_vae

    torch.manual_seed(0)
    vae = mini_vae(channels=(16, 16, 16), latent_channels=8, mid_attention=False).eval()
    return vae, load_backbone("mini").tokenizer


def test_shards_hold_the_encoded_scenes_and_rebuild_identically(tmp_path, parts):
    vae, tokenizer = parts
    world = World(seed=2, size=64, profile="v2")
    folder = build_latent_shards(world, vae, tokenizer, tmp_path / "s", 40, shard_size=16, batch=8)
    files = sorted(folder.glob("shard_*.safetensors"))
    assert len(files) == 3 and json.loads((folder / "shards.json").read_text())["profile"] == "v2"
    shards = LatentShards.load(folder)
    assert len(shards) == 40 and shards.latents.shape == (40, 8, 16, 16) and shards.latents.dtype == torch.float16
    for row in (0, 17, 39):
        index = int(shards.scene_index[row])
        assert World.split(index) == "train"
        spec, rendered, text = world.scene(index)
        pixels = torch.from_numpy(rendered.image).permute(2, 0, 1)[None] * 2 - 1
        with torch.no_grad():
            expected = vae.encode(pixels).latent_dist.mode()[0]
        torch.testing.assert_close(shards.latents[row].float(), expected, atol=2e-3, rtol=2e-3)
        assert tokenizer.decode(shards.input_ids[row], skip_special_tokens=True).split() == text.split()
        assert shards.labels[row].tolist() == list(attributes(spec).values())
        cells = shards.object_cells[row, 0]
        assert cells.sum() > 0 and cells.shape == (16, 16)
    before = files[1].read_bytes()
    files[1].unlink()
    build_latent_shards(world, vae, tokenizer, folder, 40, shard_size=16, batch=8)  # resumes the missing shard
    assert files[1].read_bytes() == before
    assert not list(folder.glob("*.partial"))


def test_shards_refuse_another_autoencoder_and_batches_are_deterministic(tmp_path, parts):
    from retouch.train.mini import mini_vae

    vae, tokenizer = parts
    world = World(seed=0, size=64, profile="v2")
    folder = build_latent_shards(world, vae, tokenizer, tmp_path / "s", 12, shard_size=8, batch=6)
    torch.manual_seed(1)
    other = mini_vae(channels=(16, 16, 16), latent_channels=8, mid_attention=False).eval()
    with pytest.raises(RetouchError, match="another build.*autoencoder"):
        build_latent_shards(world, other, tokenizer, folder, 12, shard_size=8, batch=6)
    shards = LatentShards.load(folder)
    first, again, other_step = shards.batch(5, 7), shards.batch(5, 7), shards.batch(6, 7)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other_step[0])
    assert first[0].dtype == torch.float32 and first[1].dtype == torch.int64
    with pytest.raises(RetouchError, match="no latent shards"):
        LatentShards.load(tmp_path / "empty")
