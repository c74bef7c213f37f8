# Copyright 2026 The asuka authors. Apache-2.0.
"""ASUKA inpainting on a frozen SD-1.5-inpainting backbone.

This module ships to the Hub as remote code, so it imports only torch, diffusers, timm (the MAE's), numpy, PIL and
its relative siblings (bundled with it by `hub_export`).
"""

import torch
from diffusers import AsymmetricAutoencoderKL, AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
    StableDiffusionInpaintPipeline,
    retrieve_timesteps,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import replace_example_docstring

from ..models.aligner import AsukaAligner
from ..models.decoder import AsukaDecoder
from ..models.mae import AsukaMAE
from .backbones import SD15_INPAINTING, BackboneSpec
from .cached_attention import cache_constant_conditioning
from .compilation import CompileMixin
from .decode import AsukaDecodeMixin
from .hub_light import LightRepoMixin
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
        >>> from diffusers.utils import load_image

        >>> from asuka import AsukaPipeline

        >>> # "./asuka-sd" is a folder written by `AsukaPipeline.save_pretrained` (or a Hub repo made from one).
        >>> device = "cuda" if torch.cuda.is_available() else "cpu"
        >>> dtype = torch.bfloat16 if device == "cuda" else torch.float32
        >>> pipe = AsukaPipeline.from_pretrained("./asuka-sd", torch_dtype=dtype).to(device)

        >>> image = load_image("photo.png")
        >>> mask = load_image("mask.png")  # white = repaint; the image's size or aspect ratio
        >>> result = pipe(image, mask, num_inference_steps=50, generator=torch.Generator(device).manual_seed(0))
        >>> result.images[0].save("inpainted.png")  # the input's size; pixels outside the mask are the input's
        ```
"""


class AsukaPipeline(
    StepCacheMixin,
    CompileMixin,
    LightRepoMixin,
    DiffusionPipeline,
    StableDiffusionMixin,
    TextEncoderFreeLoraMixin,
    StableDiffusionLoraLoaderMixin,
    AsukaInpaintMixin,
    AsukaDecodeMixin,
):
    r"""ASUKA inpainting with a frozen SD-1.5-inpainting UNet.

    The text conditioning is replaced by `aligner(mae.prior(image, mask))`: an MAE that sees only the unmasked pixels
    gives a prior that tells the backbone what belongs in the hole, without hallucinating objects. The
    mask-conditioned `decoder` blends the real unmasked pixels into the decoding so colours stay consistent.
    SD-1.5 LoRAs load into the UNet with diffusers' `load_lora_weights`; of diffusers' step caches the UNet takes
    Pyramid Attention Broadcast (`enable_step_cache`, see `step_cache`).

    Args:
        vae ([`AutoencoderKL`]):
            Encodes the masked image (and decodes when `decoder` is None).
        unet ([`UNet2DConditionModel`]):
            The frozen 9-channel SD-inpainting UNet.
        scheduler ([`SchedulerMixin`]):
            Any diffusers scheduler compatible with the UNet (one of [`KarrasDiffusionSchedulers`]).
        mae ([`AsukaMAE`]):
            The masked autoencoder that gives the prior from the unmasked pixels only.
        aligner ([`AsukaAligner`]):
            Maps the prior to the UNet's cross-attention space.
        decoder ([`AsukaDecoder`] or [`AsymmetricAutoencoderKL`], *optional*):
            The mask-conditioned decoder; `None` decodes with the plain VAE (the paper's decoder ablation).
    """

    # What the rest of asuka knows about the backbone (SD-2-inpainting shares its architecture facts).
    backbone_spec: BackboneSpec = SD15_INPAINTING
    model_cpu_offload_seq = "mae->aligner->vae->unet->decoder"
    compiled_components = ("mae", "aligner", "decoder")  # compiled whole; the UNet block by block
    _optional_components = ["decoder"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "mask", "masked_image_latents"]

    # The latent preparation is diffusers' own, so results match StableDiffusionInpaintPipeline exactly.
    prepare_latents = StableDiffusionInpaintPipeline.prepare_latents
    prepare_mask_latents = StableDiffusionInpaintPipeline.prepare_mask_latents
    _encode_vae_image = StableDiffusionInpaintPipeline._encode_vae_image
    prepare_extra_step_kwargs = StableDiffusionInpaintPipeline.prepare_extra_step_kwargs

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        mae: AsukaMAE,
        aligner: AsukaAligner,
        decoder: AsukaDecoder | AsymmetricAutoencoderKL | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, mae=mae, aligner=aligner, decoder=decoder)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the current step is guided (`guidance_scale > 1`); diffusers' CFG cut-off callbacks end it."""
        return self._guidance_scale > 1.0

    @property
    def default_working_resolution(self) -> int:
        """The backbone's native resolution (512 for SD-1.5)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def check_inputs(
        self,
        num_inference_steps: int,
        num_images_per_prompt: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
        working_resolution: int,
        mae_input_preprocessing: str | None = None,
        guidance_scale: float = 1.0,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> None:
        self._check_common_inputs(
            output_type,
            {"num_inference_steps": num_inference_steps, "num_images_per_prompt": num_images_per_prompt},
            callback_on_step_end_tensor_inputs,
        )
        self._check_working_resolution(working_resolution, self.vae_scale_factor)
        self.mae.resolve_input_preprocessing(mae_input_preprocessing)
        if guidance_scale > 1.0 and negative_prompt_embeds is None:
            raise ValueError(
                "`guidance_scale` > 1 needs `negative_prompt_embeds` (ASUKA has no text prompt to negate)."
            )

    @torch.no_grad()
    def encode_prior(
        self,
        image: torch.Tensor,
        hole: torch.Tensor,
        condition_weight: float | None = None,
        mae_input_preprocessing: str | None = None,
    ) -> torch.Tensor:
        """ASUKA's conditioning: `aligner(mae.prior(image, hole))` for images in [0, 1] and holes (1 = repaint) of any
        size (the MAE resizes them itself); `mae_input_preprocessing` overrides the MAE's input order."""
        prior = self.mae.prior(image, hole, mae_input_preprocessing)
        tokens = self.aligner(prior.to(self.aligner.dtype), condition_weight=condition_weight).tokens
        return tokens.to(self.unet.dtype)

    @torch.no_grad()
    @cache_constant_conditioning  # cross-attention K/V once per call, restored afterwards
    @replace_example_docstring(example_docstring=EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        guidance_scale: float = 1.0,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        condition_weight: float | None = None,
        mae_input_preprocessing: str | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        keep_unmasked: bool = True,
        working_resolution: int | None = None,
        padding_mask_crop: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> AsukaPipelineOutput | tuple:
        r"""Inpaint `image` where `mask_image` is white.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or a `list` of them):
                The image(s) to inpaint, of any size: PIL images or paths, numpy arrays (H, W, C) / (B, H, W, C)
                (uint8, or float in [0, 1]), tensors (C, H, W) / (B, C, H, W) in [0, 1].
            mask_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or a `list` of them):
                White (> 0.5) = repaint. The image's size, or the same aspect ratio; one mask, or one per image.
            num_inference_steps (`int`, *optional*, defaults to 50):
                The number of denoising steps.
            timesteps (`list[int]`, *optional*):
                Custom timesteps, in descending order, for schedulers whose `set_timesteps` accepts them.
            guidance_scale (`float`, *optional*, defaults to 1.0):
                Classifier-free guidance scale, on when above 1; the paper uses none (1.0). Guidance needs
                `negative_prompt_embeds` (ASUKA has no text prompt to negate). Read as `pipe.guidance_scale` at every
                step, so a step callback may change it (diffusers' `SDCFGCutoffCallback` ends guidance).
            prompt_embeds (`torch.Tensor`, *optional*):
                Replaces ASUKA's conditioning `aligner(mae.prior(image, mask))`, e.g. CLIP text embeddings for the SD
                baselines; batch 1 or one per image.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                The unconditional embeddings that guidance pushes away from; batch 1 or one per image.
            condition_weight (`float`, *optional*):
                Pulls the aligner output towards its null embedding (aligners that hold one); `None` uses the
                aligner's configured weight.
            mae_input_preprocessing (`str`, *optional*):
                How the MAE makes its input from the image and mask (cut to the working region, at the input's
                resolution): `"visible"` (hole blanked before resizing) or `"reference"` (the authors' order); `None`
                uses the MAE's `input_preprocessing` config.
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Samples per input image; the outputs of one image are consecutive.
            eta (`float`, *optional*, defaults to 0.0):
                DDIM's eta; ignored by other schedulers.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                One generator, or one per output (`len(image) * num_images_per_prompt`); with one per output, each
                output equals the run of its image alone with its generator.
            latents (`torch.Tensor`, *optional*):
                Initial noise latents, one per output at the working size; drawn from `generator` when not given.
            keep_unmasked (`bool`, *optional*, defaults to `True`):
                Paste only the hole back, so every unmasked pixel equals the input's exactly.
            working_resolution (`int`, *optional*):
                Long side of the size the backbone runs at (default: its native resolution, 512 for SD-1.5). Larger
                images are processed on a crop around the mask.
            padding_mask_crop (`int`, *optional*):
                Always work on a crop around the mask with this many pixels of context.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` (in [0, 1], at the input size) or `"latent"` (the denoised latents).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`AsukaPipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step, timestep, callback_kwargs)` with the
                tensors named in `callback_on_step_end_tensor_inputs` (a callback object brings its own
                `tensor_inputs`); the tensors it returns replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`):
                Names from `_callback_tensor_inputs`: `latents`, `prompt_embeds` (with guidance, the negative
                embeddings first), `mask` and `masked_image_latents`.

        Examples:

        Returns:
            [`AsukaPipelineOutput`] or `tuple`: the images, or a one-element tuple when `return_dict` is False.
        """
        # 1. Check the inputs
        tensor_inputs = self.step_callback_tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        working_resolution = working_resolution or self.default_working_resolution
        self.check_inputs(
            num_inference_steps=num_inference_steps,
            num_images_per_prompt=num_images_per_prompt,
            output_type=output_type,
            callback_on_step_end_tensor_inputs=tensor_inputs,
            working_resolution=working_resolution,
            mae_input_preprocessing=mae_input_preprocessing,
            guidance_scale=guidance_scale,
            negative_prompt_embeds=negative_prompt_embeds,
        )
        self._reset_step_state(guidance_scale)

        # 2. Standardise them: images (B, 3, H, W) in [0, 1], holes (B, 1, H, W); an empty mask has nothing to
        #    inpaint, so the call returns the input untouched
        images, holes = standardise_inputs(image, mask_image)
        if not holes.any() and output_type != "latent":
            self.maybe_free_model_hooks()
            return unchanged_output(images, num_images_per_prompt, output_type, return_dict)

        # 3. Cut the working region (the whole image, or a crop around the mask) at the UNet's resolution
        region, work_image, work_hole = cut_working_region(
            images, holes, working_resolution, self.vae_scale_factor, padding_mask_crop
        )
        batch_size, total, device = images.shape[0], images.shape[0] * num_images_per_prompt, self._execution_device
        init_image = self.image_processor.normalize(work_image).to(device)
        work_hole = work_hole.to(device)
        width, height = region.size

        # 4. Encode the prior: the aligned MAE prior of the region as the input has it (not resampled), unless
        #    embeddings are given
        if prompt_embeds is None:
            prompt_embeds = self.encode_prior(
                image=region.crop(images),
                hole=region.crop(holes),
                condition_weight=condition_weight,
                mae_input_preprocessing=mae_input_preprocessing,
            )
        prompt_embeds = repeat_to_batch(prompt_embeds.to(device, self.unet.dtype), batch_size, "prompt_embeds")
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if self.do_classifier_free_guidance:
            negative = repeat_to_batch(
                negative_prompt_embeds.to(device, self.unet.dtype), batch_size, "negative_prompt_embeds"
            )
            prompt_embeds = torch.cat([negative.repeat_interleave(num_images_per_prompt, dim=0), prompt_embeds])

        # 5. Prepare the timesteps
        timesteps, num_inference_steps = retrieve_timesteps(
            scheduler=self.scheduler, num_inference_steps=num_inference_steps, device=device, timesteps=timesteps
        )
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(begin_index=0)

        # 6. Prepare the latents: the initial noise and the mask / masked-image latents (diffusers' own preparation)
        num_channels_latents = self.vae.config.latent_channels
        expected = (total, num_channels_latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
        self._check_start_state("latents", latents, expected, "outputs, latent channels, working size / VAE factor")
        latents = self.prepare_latents(
            batch_size=total,
            num_channels_latents=num_channels_latents,
            height=height,
            width=width,
            dtype=prompt_embeds.dtype,
            device=device,
            generator=generator,
            latents=latents,
        )[0]
        # One masked image per output: each output's VAE sample comes from its own generator.
        masked_image = (init_image * (work_hole < 0.5)).repeat_interleave(num_images_per_prompt, dim=0)
        mask, masked_image_latents = self.prepare_mask_latents(
            mask=work_hole.repeat_interleave(num_images_per_prompt, dim=0),
            masked_image=masked_image,
            batch_size=total,
            height=height,
            width=width,
            dtype=prompt_embeds.dtype,
            device=device,
            generator=generator,
            do_classifier_free_guidance=False,
        )
        if self.unet.config.in_channels != num_channels_latents + mask.shape[1] + masked_image_latents.shape[1]:
            raise ValueError(
                f"`unet` takes {self.unet.config.in_channels} input channels; ASUKA needs a 9-channel inpainting UNet."
            )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator=generator, eta=eta)

        # 7. Denoising loop
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                cond = torch.cat([mask, masked_image_latents], dim=1)
                if self.do_classifier_free_guidance:
                    cond = torch.cat([cond] * 2)
                latent_model_input = torch.cat([latent_model_input, cond], dim=1)
                with self.denoiser_step("cond", i, t, num_inference_steps):  # the step caches' context
                    noise_pred = self.unet(
                        latent_model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False
                    )[0]
                if self.do_classifier_free_guidance:
                    noise_uncond, noise_cond = noise_pred.chunk(2)
                    noise_pred = noise_uncond + self.guidance_scale * (noise_cond - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    tensors = dict(
                        latents=latents,
                        prompt_embeds=prompt_embeds,
                        mask=mask,
                        masked_image_latents=masked_image_latents,
                    )
                    tensors = self._step_callback(callback_on_step_end, i, t, tensors, tensor_inputs)
                    latents, prompt_embeds = tensors["latents"], tensors["prompt_embeds"]
                    mask, masked_image_latents = tensors["mask"], tensors["masked_image_latents"]
                progress_bar.update()

        if output_type == "latent":
            self.maybe_free_model_hooks()
            return AsukaPipelineOutput(images=latents) if return_dict else (latents,)

        # 8. Decode: the mask-conditioned decoder (or the plain VAE)
        decoded = self.decode_latents(
            latents,
            init_image.repeat_interleave(num_images_per_prompt, dim=0),
            work_hole.repeat_interleave(num_images_per_prompt, dim=0),
            generator=generator,
        )
        generated = self.image_processor.denormalize(decoded.float().cpu())

        # 9. Paste back into the full-resolution input and convert
        self.maybe_free_model_hooks()
        return finish_output(
            generated, images, holes, region, keep_unmasked, num_images_per_prompt, output_type, return_dict
        )
