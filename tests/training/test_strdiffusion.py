"""training/train_strdiffusion.py: 3 steps per network on tiny components with checkpoints and resume,
the final folder loads as the component, and the authors' objectives against hand computations."""

import numpy as np
import pytest
import torch
import train_strdiffusion
from PIL import Image

import asuka_training
from asuka import StrDiffusionPipeline
from asuka.models import StrDiffusionDiscriminator, StrDiffusionUNet
from asuka.schedulers.ir_sde import IRSDEScheduler
from tests.support.training import (
    intercept_hub,
    tiny_pipeline_dir,
    training_argv,
)


COMPONENT = {"structure": StrDiffusionUNet, "texture": StrDiffusionUNet, "discriminator": StrDiffusionDiscriminator}


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return tiny_pipeline_dir(tmp_path_factory, "strdiffusion")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Smooth shapes (so Canny finds edges) at three sizes."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index, size in enumerate([(20, 24), (32, 18), (16, 16)]):
        pixels = np.zeros((*size, 3), dtype=np.uint8) + rng.integers(0, 80, 3, dtype=np.uint8)
        pixels[size[0] // 4 : size[0] // 2 + 3, size[1] // 4 : 3 * size[1] // 4] = rng.integers(150, 255, 3)
        Image.fromarray(pixels).save(folder / f"image_{index}.png")
    return folder


def run_args(pipeline_dir, image_dir, output_dir, steps, network="structure", **flags):
    """`training_argv` for one StrDiffusion network at 16 px, without validation grids unless asked."""
    flags = {"network": network, "resolution": 16, "validation_steps": 0, **flags}
    return training_argv(pipeline_dir, image_dir, output_dir, steps, **flags)


@pytest.mark.parametrize("network", ["structure", "texture", "discriminator"])
def test_three_steps_checkpoints_resume_and_final_folder(network, pipeline_dir, image_dir, tmp_path):
    output_dir = tmp_path / network
    extra = {"save_pipeline": True, "validation_steps": 3, "num_validation_images": 1} if network == "texture" else {}
    first = train_strdiffusion.main(run_args(pipeline_dir, image_dir, output_dir, 3, network=network, **extra))
    assert first.global_step == 3 and len(first.losses) == 3 and all(np.isfinite(first.losses))
    assert [p.name for p in asuka_training.list_checkpoints(output_dir)] == ["checkpoint-2", "checkpoint-3"]
    subfolder = train_strdiffusion.SUBFOLDERS[network]
    assert (output_dir / "checkpoint-3" / subfolder / "config.json").is_file()

    cls = COMPONENT[network]
    trained = cls.from_pretrained(output_dir)
    original = getattr(StrDiffusionPipeline.from_pretrained(pipeline_dir), subfolder)
    config = lambda m: {k: v for k, v in m.config.items() if not k.startswith("_")}  # noqa: E731
    assert config(trained) == config(original)
    changed = [k for k, v in original.state_dict().items() if not torch.equal(v, trained.state_dict()[k])]
    assert changed, "training left every weight unchanged"

    resumed = train_strdiffusion.main(
        run_args(pipeline_dir, image_dir, output_dir, 4, network=network, resume_from_checkpoint="latest")
    )
    assert resumed.initial_global_step == 3 and resumed.global_step == 4 and len(resumed.losses) == 1
    assert [p.name for p in asuka_training.list_checkpoints(output_dir)] == ["checkpoint-3", "checkpoint-4"]
    assert (output_dir / "README.md").is_file()

    if network == "texture":  # --save_pipeline: a complete pipeline that holds the trained net and runs
        pipe = StrDiffusionPipeline.from_pretrained(output_dir / "pipeline")
        after_first = trained.state_dict()
        assert all(torch.equal(v, after_first[k]) for k, v in pipe.texture_unet.state_dict().items())
        assert list((output_dir / "validation").glob("validation-*.png"))
        image = Image.new("RGB", (20, 12), (90, 40, 200))
        mask = Image.new("L", (20, 12), 0)
        mask.paste(255, (5, 3, 12, 9))
        out = pipe(image, mask, generator=torch.Generator().manual_seed(0)).images[0]
        assert out.size == (20, 12)


def test_matching_loss_is_hole_weighted_l1_by_hand():
    prediction = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.5, 0.0], [3.0, 5.0]]], [[[1.0, -2.0], [0.0, 0.0]]]])
    known = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [1.0, 1.0]]]])  # 1 = known pixel
    # sample 0: known |d| = 0.5, 1.0 ; hole |d| = 2, 0   -> (0.5 + 1 + 10 * 2) / 4 = 5.375
    # sample 1: hole |d| = 1, 2 ; known |d| = 0, 0       -> 10 * 3 / 4 = 7.5
    expected = (5.375 + 7.5) / 2
    assert train_strdiffusion.matching_loss(prediction, target, known).item() == pytest.approx(expected)
    # the authors' two-term form: mean over all elements of the masked differences, hole term x10
    lossm = ((prediction * (1 - known) - target * (1 - known)).abs()).flatten(1).mean(1)
    lossu = ((prediction * known - target * known).abs()).flatten(1).mean(1)
    assert train_strdiffusion.matching_loss(prediction, target, known).item() == pytest.approx(
        (lossu + 10 * lossm).mean().item()
    )
    # multi-channel images share one mask per pixel
    rgb = train_strdiffusion.matching_loss(prediction.repeat(1, 3, 1, 1), target.repeat(1, 3, 1, 1), known)
    assert rgb.item() == pytest.approx(expected)


def test_denoiser_loss_is_between_predicted_reverse_step_and_posterior_mean():
    """The structure objective recomputed by hand from the scheduler's formulas (per-sample integer t)."""
    scheduler = IRSDEScheduler(num_train_timesteps=10)
    torch.manual_seed(0)
    net = StrDiffusionUNet(
        in_channels=1, structure_channels=0, base_channels=4, depth=2, attention_heads=1, attention_head_dim=4
    )
    x0, mu = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    state, t = torch.randn(2, 1, 8, 8), torch.tensor([2, 9])
    known = (torch.rand(2, 1, 8, 8) > 0.5).float()
    noise = net(state, mu, t)
    prediction = scheduler.reverse_sde_step_mean(state, scheduler.score_from_noise(noise, t), t, mu)
    target = scheduler.reverse_optimum_step(state, x0, t, mu)
    loss = train_strdiffusion.matching_loss(prediction, target, known)
    by_hand = []
    for i, ti in enumerate(t.tolist()):
        dt, theta, sigma = scheduler.dt, scheduler.thetas[ti], scheduler.sigmas[ti]
        a, b, c = (
            torch.exp(-theta * dt),
            torch.exp(-scheduler.thetas_cumsum[ti] * dt),
            torch.exp(-scheduler.thetas_cumsum[ti - 1] * dt),
        )
        optimum = (
            a * (1 - c**2) / (1 - b**2) * (state[i] - mu[i]) + c * (1 - a**2) / (1 - b**2) * (x0[i] - mu[i]) + mu[i]
        )
        score = -noise[i] / scheduler.sigma_bars[ti]
        mean = state[i] - (theta * (mu[i] - state[i]) - sigma**2 * score) * dt
        weight = known[i] + 10 * (1 - known[i])
        by_hand.append(((mean - optimum).abs() * weight).mean())
    assert loss.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)


def test_discriminator_loss_softplus_and_triplet_by_hand():
    real, fake, anchor = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.25]), torch.tensor([1.0, 0.0])
    loss, parts = train_strdiffusion.discriminator_loss(real, fake, anchor)
    softplus = lambda v: float(np.log1p(np.exp(v)))  # noqa: E731
    expected_real = (softplus(-0.5) + softplus(1.0)) / 2
    expected_fake = (softplus(2.0) + softplus(0.25)) / 2
    eps = 1e-6  # torch's pairwise_distance adds eps to the difference; distances over the batch vector
    d_pos = np.sqrt((1.0 - 0.5 + eps) ** 2 + (0.0 + 1.0 + eps) ** 2)
    d_neg = np.sqrt((1.0 - 2.0 + eps) ** 2 + (0.0 - 0.25 + eps) ** 2)
    expected_triplet = max(d_pos - d_neg + 1.0, 0.0)
    assert parts["loss_real"].item() == pytest.approx(expected_real)
    assert parts["loss_fake"].item() == pytest.approx(expected_fake)
    assert parts["loss_triplet"].item() == pytest.approx(expected_triplet, rel=1e-5)
    assert loss.item() == pytest.approx(expected_real + expected_fake + expected_triplet, rel=1e-5)


def test_timesteps_skip_one_and_bad_flags_raise(pipeline_dir, image_dir, tmp_path):
    t = train_strdiffusion.sample_timesteps(4000, 10, torch.device("cpu"))
    assert int(t.min()) == 2 and int(t.max()) == 10
    with pytest.raises(ValueError, match="multiple of 4"):
        train_strdiffusion.main(
            run_args(pipeline_dir, image_dir, tmp_path / "d", 1, network="discriminator", train_batch_size=6)
        )
    with pytest.raises(ValueError, match="not a StrDiffusionPipeline folder"):
        train_strdiffusion.main(run_args(image_dir, image_dir, tmp_path / "x", 1, network="structure"))
    with pytest.raises(ValueError, match="structure_channels"):
        train_strdiffusion.main(
            run_args(
                pipeline_dir,
                image_dir,
                tmp_path / "y",
                1,
                network="structure",
                component_model_name_or_path=pipeline_dir / "texture_unet",
            )
        )
    with pytest.raises(SystemExit):  # argparse: unknown network name
        train_strdiffusion.main(run_args(pipeline_dir, image_dir, tmp_path / "z", 1, network="vae"))


def test_scheduler_posterior_mean_with_per_sample_timesteps_equals_one_by_one():
    scheduler = IRSDEScheduler(num_train_timesteps=10)
    xt, x0, mu = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([2, 5, 10])
    batched = scheduler.reverse_optimum_step(xt, x0, t, mu)
    alone = torch.cat(
        [scheduler.reverse_optimum_step(xt[i : i + 1], x0[i : i + 1], int(t[i]), mu[i : i + 1]) for i in range(3)]
    )
    assert torch.equal(batched, alone)


def test_push_to_hub_uploads_the_component_with_its_card(pipeline_dir, image_dir, tmp_path, monkeypatch):
    """--push_to_hub with huggingface_hub's HfApi intercepted: the uploaded folder loads as the discriminator."""
    intercept_hub(monkeypatch, tmp_path / "uploaded")
    uploads = tmp_path / "uploaded" / "someone/strdiffusion-d"
    result = train_strdiffusion.main(
        run_args(
            pipeline_dir,
            image_dir,
            tmp_path / "out",
            1,
            network="discriminator",
            push_to_hub=True,
            hub_model_id="someone/strdiffusion-d",
        )
    )
    assert result.repo_id == "someone/strdiffusion-d"
    card = (uploads / "README.md").read_text()
    assert "strdiffusion-discriminator" in card and '"network": "discriminator"' in card
    assert not list(uploads.glob("checkpoint-*"))
    pushed = StrDiffusionDiscriminator.from_pretrained(uploads)
    trained = StrDiffusionDiscriminator.from_pretrained(tmp_path / "out")
    assert all(torch.equal(v, pushed.state_dict()[k]) for k, v in trained.state_dict().items())
