"""ASUKA for FLUX.1-Fill-dev: the frozen FLUX-Fill backbone with T5 and CLIP replaced by an MAE prior.

The image conditioning follows the authors' release (`yikaiwang/ASUKA-FLUX.1-Fill`):

* tokens  = token_aligner(mae.prior(image, mask))            (B, 256, 4096), in place of T5;
* pooled  = pooled_aligner(mae.prior(image, mask)).mean(1)   (B, 768), in place of pooled CLIP;
* both are pulled towards the release's null embeddings: null + condition_weight * (x - null)
  (the aligners hold the null embeddings; the release uses condition_weight 0.5);
* the masked image is encoded by the release's own VAE encoder (`masked_image_encoder`, the `encoder.*` of its
  decoder checkpoint) where that differs from the backbone VAE's, as the authors' inference does;
* the latents are decoded (`decode.py`, shared with `AsukaPipeline`) by the 16-channel mask-conditioned
  `AsukaDecoder` after FLUX's unscaling `z / 0.3611 + 0.1159` (read from the VAE config), or by the plain VAE
  when `decoder is None`.

Everything FLUX-specific (latent packing, mask packing, image ids, timestep shift) is diffusers'
`FluxFillPipeline` code, bound to this class rather than re-derived.
"""

from __future__ import annotations

import os
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxFillPipeline,
    FluxTransformer2DModel,
    PipelineQuantizationConfig,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import FluxLoraLoaderMixin
from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift, retrieve_latents, retrieve_timesteps
from diffusers.utils import replace_example_docstring

from ..models.aligner import AsukaAligner
from ..models.decoder import AsukaDecoder
from ..models.mae import AsukaMAE
from ..models.vae_encoder import AsukaVAEEncoder
from .backbones import FLUX_FILL, BackboneSpec
from .cached_attention import cache_constant_conditioning
from .compilation import CompileMixin
from .decode import AsukaDecodeMixin
from .hub_light import LightRepoMixin, component_loading_kwargs, resolve_repo
from .inpaint_steps import (
    AsukaPipelineOutput,
    ImageInput,
    cut_working_region,
    finish_output,
    repeat_to_batch,
    standardise_inputs,
    unchanged_output,
)
from .lora_loading import TextEncoderFreeLoraMixin
from .pipeline_mixins import AsukaInpaintMixin, StepCallback
from .step_cache import StepCacheMixin


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch

        >>> from asuka import AsukaFluxPipeline

        >>> # FLUX.1-Fill-dev is gated: accept its licence on the Hub and log in. "./asuka-flux" is the folder written
        >>> # by `python -m asuka.convert asuka-flux --release yikaiwang/ASUKA-FLUX.1-Fill --out ./asuka-flux`.
        >>> pipe = AsukaFluxPipeline.from_pretrained(
        ...     "black-forest-labs/FLUX.1-Fill-dev", asuka="./asuka-flux", torch_dtype=torch.bfloat16
        ... )
        >>> device = "cuda" if torch.cuda.is_available() else "cpu"
        >>> pipe = pipe.to(device)

        >>> # Paths are read as they are (or pass PIL images, arrays, tensors); the mask: white = repaint, the image's
        >>> # size or aspect ratio. The release's settings: 50 steps, FLUX guidance 30, condition_weight 0.5 (the
        >>> # aligners' default).
        >>> generator = torch.Generator(device).manual_seed(0)
        >>> result = pipe("photo.png", "mask.png", guidance_scale=30.0, generator=generator)
        >>> result.images[0].save("inpainted.png")  # the input's size; pixels outside the mask are the input's
        ```
"""


class AsukaFluxPipeline(
    StepCacheMixin,
    CompileMixin,
    LightRepoMixin,
    DiffusionPipeline,
    TextEncoderFreeLoraMixin,
    FluxLoraLoaderMixin,
    AsukaInpaintMixin,
    AsukaDecodeMixin,
):
    r"""FLUX.1-Fill inpainting conditioned on the visible image (ASUKA) instead of a text prompt.

    Assemble it from the gated FLUX repo and the converted ASUKA components with
    `AsukaFluxPipeline.from_pretrained("black-forest-labs/FLUX.1-Fill-dev", asuka=...)` (text encoders are never
    loaded). FLUX.1-Fill's guidance is a scale embedded in the transformer, not classifier-free guidance, so the
    pipeline has `guidance_scale` but no `do_classifier_free_guidance` (as `FluxFillPipeline`).

    Args:
        vae ([`AutoencoderKL`]):
            The FLUX VAE (16 latent channels): encodes the masked image (unless `masked_image_encoder` is given), and
            decodes when `decoder` is None.
        transformer ([`FluxTransformer2DModel`]):
            The frozen FLUX.1-Fill transformer.
        scheduler ([`FlowMatchEulerDiscreteScheduler`]):
            FLUX's flow-matching scheduler (resolution-dependent shift).
        mae ([`AsukaMAE`]):
            The masked autoencoder that gives the prior from the unmasked pixels only.
        token_aligner ([`AsukaAligner`]):
            Maps the prior to the tokens that replace T5's (4096 wide in the release).
        pooled_aligner ([`AsukaAligner`]):
            Maps the prior to the pooled vector that replaces CLIP's (768 wide in the release).
        decoder ([`AsukaDecoder`], *optional*):
            The 16-channel mask-conditioned decoder; `None` decodes with the plain VAE.
        masked_image_encoder ([`AsukaVAEEncoder`], *optional*):
            The release's VAE encoder, which encodes the masked image in place of `vae`'s (the converter stores it
            only where it differs from the backbone VAE's encoder); the VAE's shift and scaling still apply.
        working_resolution (`int`, *optional*, defaults to 1024):
            The default long side the backbone runs at (saved in the pipeline config).
    """

    # What the rest of asuka knows about the backbone.
    backbone_spec: BackboneSpec = FLUX_FILL
    # The VAE encodes the image (for `prepare_latents`), then it or the release's encoder the masked image, before
    # denoising; with an ASUKA decoder neither is needed again.
    model_cpu_offload_seq = "mae->token_aligner->pooled_aligner->vae->masked_image_encoder->transformer->decoder"
    # compiled whole by `compile_components`; the transformer block by block
    compiled_components = ("mae", "token_aligner", "pooled_aligner", "decoder")
    _optional_components = ["decoder", "masked_image_encoder"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    # diffusers' FLUX.1-Fill logic, reused as-is (they only need `vae`, `scheduler`, `vae_scale_factor`
    # and `latent_channels` on `self`).
    prepare_latents = FluxFillPipeline.prepare_latents
    get_timesteps = FluxFillPipeline.get_timesteps
    _pack_latents = staticmethod(FluxFillPipeline._pack_latents)
    _prepare_latent_image_ids = staticmethod(FluxFillPipeline._prepare_latent_image_ids)

    def __init__(
        self,
        vae: AutoencoderKL,
        transformer: FluxTransformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        mae: AsukaMAE,
        token_aligner: AsukaAligner,
        pooled_aligner: AsukaAligner,
        decoder: AsukaDecoder | None = None,
        masked_image_encoder: AsukaVAEEncoder | None = None,
        working_resolution: int = 1024,
    ):
        super().__init__()
        self.register_modules(vae=vae, transformer=transformer, scheduler=scheduler)  # the frozen FLUX.1-Fill backbone
        self.register_modules(mae=mae, token_aligner=token_aligner, pooled_aligner=pooled_aligner, decoder=decoder)
        self.register_modules(masked_image_encoder=masked_image_encoder)
        self.register_to_config(working_resolution=working_resolution)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.vae.config.latent_channels
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor * 2, vae_latent_channels=self.latent_channels
        )

    def check_inputs(
        self,
        num_inference_steps: int,
        num_images_per_prompt: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
        working_resolution: int,
        mae_input_preprocessing: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
    ) -> None:
        self._check_common_inputs(
            output_type,
            {"num_inference_steps": num_inference_steps, "num_images_per_prompt": num_images_per_prompt},
            callback_on_step_end_tensor_inputs,
        )
        self._check_working_resolution(working_resolution, self.vae_scale_factor * 2)
        self.mae.resolve_input_preprocessing(mae_input_preprocessing)
        if (prompt_embeds is None) != (pooled_prompt_embeds is None):
            raise ValueError("Pass both `prompt_embeds` and `pooled_prompt_embeds`, or neither (ASUKA conditioning).")

    # ------------------------------------------------------------------ assembly

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        asuka: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> AsukaFluxPipeline:
        """Load a saved `AsukaFluxPipeline` or a light repo, or assemble one from two sources.

        With `asuka=None` this is `DiffusionPipeline.from_pretrained` on a folder written by
        `save_pretrained`, or reads the light repo written by `save_pretrained(light=True)` and by
        `python -m asuka.convert asuka-flux` (there `torch_dtype`, `variant` and the Hub arguments
        apply to the backbone too; `backbone_revision=` overrides the FLUX revision it pins).
        With `asuka=` (a folder or Hub repo of ASUKA components), `vae`, `transformer` and `scheduler`
        come from `pretrained_model_name_or_path` (e.g. "black-forest-labs/FLUX.1-Fill-dev") and
        `mae`, `token_aligner`, `pooled_aligner`, `decoder` (and `masked_image_encoder`, where the folder has one)
        from `asuka`. Components passed as keyword arguments are used instead of loading them (a quantized
        `transformer=`, e.g. from `FluxTransformer2DModel.from_single_file` of a GGUF file). `torch_dtype` (a dtype or
        a dict by component name with a `"default"`), `quantization_config` (a diffusers
        `PipelineQuantizationConfig`; ASUKA's parts are quantized only where it names them), `cache_dir`, `token`,
        `revision`, `local_files_only` and `variant` apply to the FLUX repo; all but `revision`/`variant` to
        `asuka`. Without `asuka=`, `quantization_config` and a dtype dict reach a saved pipeline's or a light repo's
        components the same way.
        """
        if asuka is None:  # a saved pipeline or a light repo (`LightRepoMixin`)
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        init_names = set().union(*cls._get_signature_keys(cls))  # the components and `working_resolution`
        components = {name: kwargs.pop(name) for name in list(kwargs) if name in init_names}
        hub_keys = ("cache_dir", "token", "local_files_only", "revision", "variant")
        load_kwargs = {key: kwargs.pop(key) for key in hub_keys if key in kwargs}
        torch_dtype, quantization_config = kwargs.pop("torch_dtype", None), kwargs.pop("quantization_config", None)
        if kwargs:
            raise ValueError(
                f"Unsupported argument(s) {sorted(kwargs)} when assembling from two sources; accepted: "
                f"{sorted(hub_keys)}, torch_dtype, quantization_config and {sorted(init_names)}."
            )
        for name, class_name in cls.backbone_spec.component_classes().items():  # the FLUX.1-Fill backbone's parts
            if name not in components:
                component_class = getattr(diffusers, class_name)
                # schedulers hold no weights: no dtype, no variant, no quantization
                skip = ("variant",) if name == "scheduler" else ()
                components[name] = component_class.from_pretrained(
                    pretrained_model_name_or_path,
                    subfolder=name,
                    **{key: value for key, value in load_kwargs.items() if key not in skip},
                    **component_loading_kwargs(name, component_class, torch_dtype, quantization_config),
                )
        asuka_kwargs = {k: v for k, v in load_kwargs.items() if k not in ("revision", "variant")}
        loaded = load_asuka_flux_components(
            asuka, torch_dtype=torch_dtype, quantization_config=quantization_config, **asuka_kwargs
        )
        for name, module in loaded.items():
            components.setdefault(name, module)
        return cls(**components)

    # ------------------------------------------------------------------ conditioning

    @torch.no_grad()
    def encode_prior(
        self,
        image: torch.Tensor,
        hole: torch.Tensor,
        condition_weight: float | None = None,
        mae_input_preprocessing: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ASUKA's conditioning, (tokens, pooled) in place of T5's and pooled CLIP's: the aligners over
        `mae.prior(image, hole)`.

        `image` is (B,3,H,W) in [0,1], `hole` (B,1,H,W) with 1 = repaint, of any size (the MAE resizes them itself);
        `condition_weight=None` uses each aligner's configured weight (0.5 for the release),
        `mae_input_preprocessing=None` the MAE's configured input order.
        """
        prior = self.mae.prior(image, hole, mae_input_preprocessing)
        tokens = self.token_aligner(prior.to(self.token_aligner.dtype), condition_weight=condition_weight).tokens
        pooled = self.pooled_aligner(prior.to(self.pooled_aligner.dtype), condition_weight=condition_weight).pooled
        return tokens, pooled

    def _encode_vae_image(self, image: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None):
        """`FluxFillPipeline._encode_vae_image` in the VAE's dtype, the latents returned in `image`'s (the
        transformer's): a bf16, quantized or cast transformer meets a VAE kept in float32 here."""
        latents = FluxFillPipeline._encode_vae_image(self, image=image.to(self.vae.dtype), generator=generator)
        return latents.to(image.dtype)

    def prepare_mask_latents(
        self,
        mask: torch.Tensor,
        masked_image: torch.Tensor,
        batch_size: int,
        num_channels_latents: int,
        num_images_per_prompt: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`FluxFillPipeline.prepare_mask_latents`, with the masked image encoded by `masked_image_encoder` when the
        pipeline has one (the release's encoder, as the authors' inference uses it) instead of by `vae`.

        The release's encoder samples its latents as diffusers samples the VAE's (with `generator`); diffusers' code
        then applies the VAE's `shift_factor` and `scaling_factor`, casts them to `dtype` (the transformer's) and packs
        them with the mask. The image is encoded here, in the encoder's own dtype, so that a transformer in another
        dtype (bf16, quantized, cast) meets a float32 VAE or encoder.
        """
        if masked_image.shape[1] != num_channels_latents:  # pixels; latents are taken as they are, as diffusers does
            encoder = self.masked_image_encoder if self.masked_image_encoder is not None else self.vae
            encoded = encoder.encode(masked_image.to(dtype=encoder.dtype))
            masked_image = retrieve_latents(encoder_output=encoded, generator=generator)
        return FluxFillPipeline.prepare_mask_latents(
            self,
            mask=mask,
            masked_image=masked_image,
            batch_size=batch_size,
            num_channels_latents=num_channels_latents,
            num_images_per_prompt=num_images_per_prompt,
            height=height,
            width=width,
            dtype=dtype,
            device=device,
            generator=generator,
        )

    # ------------------------------------------------------------------ call

    @torch.no_grad()
    @cache_constant_conditioning  # context_embedder once per call, restored afterwards
    @replace_example_docstring(example_docstring=EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        num_inference_steps: int = 50,
        guidance_scale: float = 30.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        condition_weight: float | None = None,
        mae_input_preprocessing: str | None = None,
        keep_unmasked: bool = True,
        working_resolution: int | None = None,
        padding_mask_crop: int | None = None,
        sigmas: list[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> AsukaPipelineOutput | tuple:
        r"""Inpaint `image` where `mask_image` is white, with FLUX.1-Fill conditioned on the MAE prior.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or a `list` of them):
                The image(s) to inpaint, of any size, in every form [`AsukaPipeline`] takes (the same reading).
            mask_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or a `list` of them):
                White (> 0.5) = repaint, at the image's size or aspect ratio; one mask, or one per image.
            num_inference_steps (`int`, *optional*, defaults to 50):
                The number of denoising steps (the release uses 50).
            guidance_scale (`float`, *optional*, defaults to 30.0):
                FLUX.1-Fill's embedded guidance scale (the release uses 30); readable as `pipe.guidance_scale`.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                One generator, or one per output (`len(image) * num_images_per_prompt`); with one per output, each
                output equals the run of its image alone with its generator.
            latents (`torch.Tensor`, *optional*):
                Initial noise latents, packed as `FluxFillPipeline` packs them, one per output at the working size;
                drawn from `generator` when not given.
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Samples per input image; the outputs of one image are consecutive.
            prompt_embeds (`torch.Tensor`, *optional*):
                Replaces the ASUKA tokens (with `pooled_prompt_embeds`; both or neither), e.g. T5 embeddings for
                the plain FLUX-Fill baseline; batch 1 or one per image.
            pooled_prompt_embeds (`torch.Tensor`, *optional*):
                Replaces the ASUKA pooled vector, e.g. pooled CLIP embeddings; batch 1 or one per image.
            condition_weight (`float`, *optional*):
                Interpolation towards the aligners' null embeddings; `None` uses the aligners' own (0.5 in the
                release).
            mae_input_preprocessing (`str`, *optional*):
                How the MAE makes its input from the image and mask (cut to the working region, at the input's
                resolution): `"reference"` (the authors' order; what `python -m asuka.convert asuka-flux` configures)
                or `"visible"` (hole blanked before resizing); `None` uses the MAE's `input_preprocessing` config.
            keep_unmasked (`bool`, *optional*, defaults to `True`):
                Paste only the hole back, so every unmasked pixel equals the input's exactly.
            working_resolution (`int`, *optional*):
                Long side the backbone runs at (default `config.working_resolution`, 1024); larger images are
                processed on a crop around the mask.
            padding_mask_crop (`int`, *optional*):
                Always work on a crop around the mask with this many pixels of context.
            sigmas (`list[float]`, *optional*):
                Custom flow-matching sigmas (default: FLUX's linear schedule, shifted for the resolution).
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` (in [0, 1], at the input size) or `"latent"` (packed FLUX latents, as
                `FluxFillPipeline` returns them).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`AsukaPipelineOutput`] instead of a tuple.
            joint_attention_kwargs (`dict`, *optional*):
                Passed to the transformer's attention processors.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                The step callback, called as in [`AsukaPipeline`] with the tensors named below.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`):
                Names from `_callback_tensor_inputs`: `latents` and `prompt_embeds`.

        Examples:

        Returns:
            [`AsukaPipelineOutput`] or `tuple`: the images, or a one-element tuple when `return_dict` is False.
        """
        # 1. Check the inputs
        tensor_inputs = self.step_callback_tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        working_resolution = working_resolution or self.config.working_resolution
        self.check_inputs(
            num_inference_steps=num_inference_steps,
            num_images_per_prompt=num_images_per_prompt,
            output_type=output_type,
            callback_on_step_end_tensor_inputs=tensor_inputs,
            working_resolution=working_resolution,
            mae_input_preprocessing=mae_input_preprocessing,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
        )
        self._reset_step_state(guidance_scale)

        # 2. Standardise them: images (B, 3, H, W) in [0, 1], holes (B, 1, H, W); an empty mask has nothing to
        #    inpaint, so the call returns the input untouched
        images, holes = standardise_inputs(image, mask_image)
        if not holes.any() and output_type != "latent":
            self.maybe_free_model_hooks()
            return unchanged_output(images, num_images_per_prompt, output_type, return_dict)

        # 3. Cut the working region (the whole image, or a crop around the mask), sides multiples of the packed
        #    latent patch (2 latent pixels), at the transformer's resolution
        region, work_image, work_hole = cut_working_region(
            images, holes, working_resolution, self.vae_scale_factor * 2, padding_mask_crop
        )
        batch_size, total, device = images.shape[0], images.shape[0] * num_images_per_prompt, self._execution_device
        init_image = self.image_processor.normalize(work_image)
        width, height = region.size

        # 4. Encode the prior: tokens and pooled vector from the aligned MAE prior of the region as the input has it
        #    (not resampled), unless embeddings are given
        if prompt_embeds is None:
            prompt_embeds, pooled_prompt_embeds = self.encode_prior(
                image=region.crop(images),
                hole=region.crop(holes),
                condition_weight=condition_weight,
                mae_input_preprocessing=mae_input_preprocessing,
            )
        dtype = self.transformer.dtype
        prompt_embeds = repeat_to_batch(prompt_embeds.to(device, dtype), batch_size, "prompt_embeds")
        pooled_prompt_embeds = repeat_to_batch(
            pooled_prompt_embeds.to(device, dtype), batch_size, "pooled_prompt_embeds"
        )
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        pooled_prompt_embeds = pooled_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)

        # 5. Prepare the timesteps: FLUX's flow-matching schedule, shifted for this resolution
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None else sigmas
        image_seq_len = (height // self.vae_scale_factor // 2) * (width // self.vae_scale_factor // 2)
        mu = calculate_shift(
            image_seq_len=image_seq_len,
            base_seq_len=self.scheduler.config.get("base_image_seq_len", 256),
            max_seq_len=self.scheduler.config.get("max_image_seq_len", 4096),
            base_shift=self.scheduler.config.get("base_shift", 0.5),
            max_shift=self.scheduler.config.get("max_shift", 1.15),
        )
        timesteps, num_inference_steps = retrieve_timesteps(
            scheduler=self.scheduler, num_inference_steps=num_inference_steps, device=device, sigmas=sigmas, mu=mu
        )
        timesteps, num_inference_steps = self.get_timesteps(
            num_inference_steps=num_inference_steps, strength=1.0, device=device
        )

        # 6. Prepare the latents: the noise and the packed masked-image latents + mask (FluxFillPipeline's own
        #    preparation), one image per output so that each output's VAE samples and noise come from its own generator
        init_image = init_image.repeat_interleave(num_images_per_prompt, dim=0)
        work_hole = work_hole.repeat_interleave(num_images_per_prompt, dim=0)
        latent_timestep = timesteps[:1].repeat(total)
        tokens = (height // (self.vae_scale_factor * 2)) * (width // (self.vae_scale_factor * 2))
        expected = (total, tokens, self.latent_channels * 4)
        self._check_start_state("latents", latents, expected, "outputs, 2x2 latent patches, latent channels x 4")
        latents, latent_image_ids = self.prepare_latents(
            image=init_image,
            timestep=latent_timestep,
            batch_size=total,
            num_channels_latents=self.latent_channels,
            height=height,
            width=width,
            dtype=dtype,
            device=device,
            generator=generator,
            latents=latents,
        )
        masked_image = (init_image * (1 - work_hole)).to(device=device)  # encoded in the encoder's dtype
        packed_mask, masked_image_latents = self.prepare_mask_latents(
            mask=work_hole,
            masked_image=masked_image,
            batch_size=total,
            num_channels_latents=self.latent_channels,
            num_images_per_prompt=1,
            height=height,
            width=width,
            dtype=dtype,
            device=device,
            generator=generator,
        )
        masked_image_latents = torch.cat((masked_image_latents, packed_mask), dim=-1)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32).expand(total)

        # 7. Denoising loop
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                timestep = t.expand(latents.shape[0]).to(latents.dtype)
                with self.denoiser_step("cond", i, t, num_inference_steps):  # the step caches' context
                    noise_pred = self.transformer(
                        hidden_states=torch.cat((latents, masked_image_latents), dim=2),
                        timestep=timestep / 1000,
                        guidance=guidance,
                        pooled_projections=pooled_prompt_embeds,
                        encoder_hidden_states=prompt_embeds,
                        txt_ids=text_ids,
                        img_ids=latent_image_ids,
                        joint_attention_kwargs=joint_attention_kwargs,
                        return_dict=False,
                    )[0]
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    tensors = {"latents": latents, "prompt_embeds": prompt_embeds}
                    tensors = self._step_callback(callback_on_step_end, i, t, tensors, tensor_inputs)
                    latents, prompt_embeds = tensors["latents"], tensors["prompt_embeds"]
                progress_bar.update()

        if output_type == "latent":  # packed, as FluxFillPipeline returns them
            self.maybe_free_model_hooks()
            return AsukaPipelineOutput(images=latents) if return_dict else (latents,)

        # 8. Decode: the mask-conditioned AsukaDecoder (or the plain VAE) after FLUX's unpacking and unscaling
        decoded = self.decode_latents(latents, init_image, work_hole, generator=generator)
        generated = self.image_processor.denormalize(decoded.float().cpu())

        # 9. Paste back into the full-resolution input and convert
        self.maybe_free_model_hooks()
        return finish_output(
            generated, images, holes, region, keep_unmasked, num_images_per_prompt, output_type, return_dict
        )


def load_asuka_flux_components(
    asuka: str | os.PathLike,
    torch_dtype: torch.dtype | dict[str, torch.dtype] | None = None,
    quantization_config: PipelineQuantizationConfig | None = None,
    **hub_kwargs: Any,
) -> dict[str, torch.nn.Module | None]:
    """`mae`, `token_aligner`, `pooled_aligner`, `decoder` and `masked_image_encoder` from a converted folder or Hub
    repo; `masked_image_encoder` is None where the folder has none (the release's encoder equals the backbone's).

    `torch_dtype` (a dtype or a dict by component name), `quantization_config` (a `PipelineQuantizationConfig`: only
    the components it names are quantized, e.g. `token_aligner`) and `hub_kwargs` (`cache_dir`, `token`,
    `local_files_only`) go to `from_pretrained`. A folder without all four required components (for example a
    half-written one) raises `ValueError`.
    """
    classes = {"mae": AsukaMAE, "token_aligner": AsukaAligner, "pooled_aligner": AsukaAligner, "decoder": AsukaDecoder}
    if os.path.isdir(asuka):
        missing = [name for name in classes if not os.path.isfile(os.path.join(asuka, name, "config.json"))]
        if missing:
            raise ValueError(
                f"{asuka} is not a converted ASUKA-FLUX folder: missing {missing}; accepted: the output of "
                "`python -m asuka.convert asuka-flux` (sub-folders mae, token_aligner, pooled_aligner, decoder)."
            )
    encoder_config = "masked_image_encoder/config.json"  # fetched alone from a Hub repo, to see if it is there
    has_encoder = os.path.isfile(os.path.join(resolve_repo(asuka, [encoder_config], **hub_kwargs), encoder_config))
    classes["masked_image_encoder"] = AsukaVAEEncoder if has_encoder else None
    return {
        name: None
        if model_class is None
        else model_class.from_pretrained(
            asuka,
            subfolder=name,
            **hub_kwargs,
            **component_loading_kwargs(name, model_class, torch_dtype, quantization_config),
        )
        for name, model_class in classes.items()
    }
