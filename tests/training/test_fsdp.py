"""The frozen denoiser under FSDP (training/configs/fsdp_flux.yaml): `prepare_frozen` hands it to
`accelerator.prepare` under FSDP only, and the scripts then call what `prepare` returned (training step, latent
augmentation, validation) and save the unsharded weights. accelerate refuses FSDP without a GPU, so the decision is
checked with a stub accelerator and the scripts with a stand-in for FSDP's wrapper (tiny FLUX, CPU)."""

import copy

import pytest
import torch
import train_aligner
import train_decoder
from accelerate.utils import DistributedType
from safetensors.torch import load_file

import asuka_training
from asuka import AsukaFluxPipeline
from tests.support.training import (
    random_images,
    training_argv,
)


TRANSFORMER_WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


class StubAccelerator:
    """What `prepare_frozen` uses of an accelerator; `prepare` records what it is handed and returns a wrapper."""

    def __init__(self, distributed_type: DistributedType, is_fsdp2: bool = False):
        self.distributed_type, self.is_fsdp2 = distributed_type, is_fsdp2
        self.prepared, self._models = [], []

    def prepare(self, *objects):
        self.prepared.extend(objects)
        wrapped = torch.nn.ModuleDict({"module": objects[0]}).train()
        self._models.append(wrapped)
        return wrapped


class ShardStandIn(torch.nn.Module):
    """As FSDP's wrapper looks to the scripts: it runs the module and forwards attributes (`config`, `dtype`) to it,
    while the module it was given keeps no usable weights (NaN here: its parameters are shards under FSDP)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module, self.calls = copy.deepcopy(module), 0
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.fill_(float("nan"))

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("images"), [(40, 48), (36, 36), (32, 50)])


@pytest.mark.parametrize("distributed_type", [DistributedType.FSDP, DistributedType.MULTI_CPU, DistributedType.NO])
def test_only_fsdp_prepares_the_frozen_model_and_keeps_it_out_of_the_checkpoints(distributed_type):
    model = torch.nn.Linear(2, 2)
    accelerator = StubAccelerator(distributed_type)
    returned = asuka_training.prepare_frozen(accelerator, model)
    if distributed_type == DistributedType.FSDP:
        assert accelerator.prepared == [model] and returned["module"] is model
        assert accelerator._models == [] and not returned.training  # save_state/load_state never see it
    else:
        assert accelerator.prepared == [] and returned is model
    assert asuka_training.shards_frozen_models(accelerator) == (distributed_type == DistributedType.FSDP)


def test_fsdp2_is_refused_with_the_setting_to_change():
    accelerator = StubAccelerator(DistributedType.FSDP, is_fsdp2=True)
    with pytest.raises(ValueError, match="fsdp_version: 1"):
        asuka_training.prepare_frozen(accelerator, torch.nn.Linear(2, 2))
    assert accelerator.prepared == []


def fake_fsdp(monkeypatch, shard: bool) -> list:
    """Runs of the scripts on a real (CPU) accelerator whose `prepare` turns the transformer, handed alone, into a
    `ShardStandIn`; with `shard` the decision is FSDP's. Returns what `prepare` was handed, per call, and the
    stand-ins it returned."""
    calls, stand_ins, real_setup = [], [], asuka_training.setup_accelerator

    def setup_accelerator(args):
        accelerator = real_setup(args)
        real_prepare = accelerator.prepare

        def prepare(*objects, **kwargs):
            calls.append(objects)
            if len(objects) == 1 and type(objects[0]).__name__ == "FluxTransformer2DModel":
                wrapped = ShardStandIn(objects[0])
                stand_ins.append(wrapped)
                accelerator._models.append(wrapped)  # as accelerate's prepare does
                return wrapped
            return real_prepare(*objects, **kwargs)

        accelerator.prepare = prepare
        return accelerator

    monkeypatch.setattr(asuka_training, "setup_accelerator", setup_accelerator)
    for module in (asuka_training, asuka_training.setup):
        monkeypatch.setattr(module, "shards_frozen_models", lambda accelerator: shard)
    return calls, stand_ins


@pytest.mark.parametrize("script", ["aligner", "decoder"])
def test_under_fsdp_the_scripts_call_the_prepared_transformer_and_save_the_full_one(
    script, flux_dir, image_dir, tmp_path, monkeypatch
):
    calls, stand_ins = fake_fsdp(monkeypatch, shard=True)
    flags = {"resolution": 32, "validation_steps": 1, "checkpointing_steps": 1, "save_pipeline": True}
    if script == "aligner":
        flags.update(aligner_head_dim=16, pooled_aligner_head_dim=8, validation_inference_steps=1)
        result = train_aligner.main(training_argv(flux_dir, image_dir, tmp_path / "out", 2, **flags))
    else:
        result = train_decoder.main(
            training_argv(flux_dir, image_dir, tmp_path / "out", 2, latent_aug_prob=1, **flags)
        )
    # the original module's weights are NaN: a finite loss means every forward went through the prepared one
    assert result.global_step == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    (stand_in,) = stand_ins
    assert [type(objects[0]).__name__ for objects in calls][-1] == "FluxTransformer2DModel"  # prepared after the rest
    assert stand_in.calls > 2  # training steps (or latent augmentation) and the validation grids
    assert sorted(p.name for p in (tmp_path / "out" / "validation").iterdir()) == [
        "validation-0000001.png",
        "validation-0000002.png",
    ]
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert not list(checkpoint.rglob("*transformer*")) and not list(checkpoint.rglob("pytorch_model_fsdp*"))
    saved = load_file(tmp_path / "out" / "pipeline" / TRANSFORMER_WEIGHTS)
    loaded = load_file(flux_dir / TRANSFORMER_WEIGHTS)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[key], loaded[key]) for key in loaded)
    assert type(AsukaFluxPipeline.from_pretrained(tmp_path / "out" / "pipeline").transformer).__name__ == (
        "FluxTransformer2DModel"
    )


def test_without_fsdp_the_transformer_is_never_prepared(flux_dir, image_dir, tmp_path, monkeypatch):
    calls, stand_ins = fake_fsdp(monkeypatch, shard=False)
    flags = {"resolution": 32, "validation_steps": 0, "checkpointing_steps": 0}
    result = train_decoder.main(training_argv(flux_dir, image_dir, tmp_path / "out", 1, latent_aug_prob=1, **flags))
    assert (
        result.global_step == 1 and len(calls) == 1 and not stand_ins
    )  # the decoder, its optimizer, the data and the schedule
    assert not any(type(obj).__name__ == "FluxTransformer2DModel" for objects in calls for obj in objects)
