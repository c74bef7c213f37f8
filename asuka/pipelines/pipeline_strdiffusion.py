"""StrDiffusionPipeline: the authors' two-stage IR-SDE sampler with structure guidance and adaptive
resampling (StrDiffusion, CVPR 2024), batched, on any device, at any input size.

Conventions inside the sampler follow the reference: images in [0, 1]; M = 1 on KNOWN pixels (the
public `mask_image` is white = hole, as everywhere in asuka); texture SDE mean Y*M, structure SDE mean
Canny(Y)*M, structure start Gray(Y).

Reference quirks reproduced by default, each with a flag (off by default) that changes it:
* `refresh_discriminator_reference`: the reference compares every resampled candidate with the FIRST
  discriminator value D_n of the step, never updated after an accept/average; True re-scores D_n.
* `fix_resampling_levels`: the reference re-noises with theta/sigma indices t-1..t+step-2 while the
  reverse passes use t+step-1..t (off by one), and pastes the level-(t-1) known structure before every
  reverse pass; True re-noises with t..t+step-1 and pastes a fresh known-structure sample of the level
  being denoised.
* `late_structure_rgb2gray`: the late stage guides texture with the plain channel mean of the texture
  state; True uses the rgb2gray weights the structure net was trained on.
* `accept_higher_discriminator`: the reference accepts a candidate whose D is LOWER, while D training
  pushes good pairs UP; True accepts the higher one.
* `discriminator_full_state`: the sampler feeds D the texture state times the mask, training fed the
  full state; True feeds the full state.
* `round_structure_input`: the reference truncates (floors) to uint8 before rgb2gray/Canny; True rounds.
* `canny_sigma` (2 at test, 3 in all training loaders) and the resampling constants
  (`resample_u_max=6, resample_u_min=3, resample_jump=5, resample_depth=5`, the Places2 T=400 set that
  the reference hard-codes whatever T is; its comment gives 25, 4, 2, 2 for T=100) are config entries.

Batching: decisions are made per sample. The discriminator is evaluated with minibatch-stddev group 1,
i.e. exactly what the batch-1 reference computes, so with one generator per sample a batch reproduces its
samples run one by one. (Evaluating it with the authors' group of min(B, 4) would make a sample's
decisions depend on the other samples; the pipeline never does that.)
"""

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from skimage.color import rgb2gray
from skimage.feature import canny

from ..models.strdiffusion import StrDiffusionDiscriminator, StrDiffusionUNet
from ..schedulers.ir_sde import IRSDEScheduler
from .inpaint_steps import ImageInput, standardise_inputs, to_output_type
from .pipeline_mixins import StepCallback, StepStateMixin


RGB2GRAY = (0.2125, 0.7154, 0.0721)  # scikit-image's rgb2gray weights

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch

        >>> from asuka import StrDiffusionPipeline

        >>> # "./strdiffusion" is the folder written by `python -m asuka.convert strdiffusion --texture G.pth
        >>> # --structure Gs.pth --discriminator D.pth --out ./strdiffusion` from the authors' checkpoints.
        >>> device = "cuda" if torch.cuda.is_available() else "cpu"
        >>> pipe = StrDiffusionPipeline.from_pretrained("./strdiffusion").to(device)

        >>> # Image and mask as paths (or PIL images, arrays, tensors); white = repaint, at the image's size or ratio.
        >>> output = pipe("photo.png", "mask.png", generator=torch.Generator(device).manual_seed(0))
        >>> output.images[0].save("inpainted.png")
        >>> decisions = output.decisions[0]  # (t, iteration, "accept" / "average" / "stop") of the resampling
        ```
"""


@dataclass
class StrDiffusionPipelineOutput(BaseOutput):
    """images: inpainted results at the input size; decisions: per sample, the (t, iteration, decision)
    of every resampling iteration ("accept", "average" or "stop")."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    decisions: list[list[tuple]]


def extract_structure(image: torch.Tensor, sigma: float = 2.0, round_input: bool = False):
    """Grayscale and Canny edge maps (B, 1, H, W) of images in [0, 1], as the reference dataset makes them:
    uint8 conversion by truncation (torchvision ToPILImage), scikit-image rgb2gray, canny(gray, sigma)."""
    scaled = image.detach().float().cpu().clamp(0, 1) * 255
    as_uint8 = (scaled.round() if round_input else scaled).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    grays, edges = [], []
    for array in as_uint8:
        gray = rgb2gray(array)
        grays.append(torch.from_numpy(gray).float())
        edges.append(torch.from_numpy(canny(gray, sigma=sigma)).float())
    return torch.stack(grays)[:, None], torch.stack(edges)[:, None]


class _Noise:
    """Standard-normal draws for the sampler: from per-sample generators (only active samples draw, so a
    batch equals its samples run alone), one generator, or a recorded tape (conformance testing)."""

    def __init__(self, generator, tape: Iterable[torch.Tensor] | None, device: torch.device):
        self.generator = generator
        self.tape: Iterator[torch.Tensor] | None = None if tape is None else iter(tape)
        self.device = device

    def __call__(self, like: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        if self.tape is not None:
            try:
                draw = next(self.tape)
            except StopIteration:
                raise ValueError("`noise_tape` ran out of draws.") from None
            if draw.shape != like.shape:
                raise ValueError(f"`noise_tape` draw has shape {tuple(draw.shape)}, expected {tuple(like.shape)}.")
            return draw.to(like)
        if isinstance(self.generator, list):
            rows = [
                randn_tensor(shape=(1, *like.shape[1:]), generator=g, device=self.device, dtype=like.dtype)
                if active is None or active[i]
                else torch.zeros_like(like[:1])
                for i, g in enumerate(self.generator)
            ]
            return torch.cat(rows)
        return randn_tensor(shape=like.shape, generator=self.generator, device=self.device, dtype=like.dtype)


class StrDiffusionPipeline(DiffusionPipeline, StepStateMixin):
    r"""Structure-guided IR-SDE inpainting (see the module docstring for conventions and quirk flags).

    Args:
        texture_unet ([`StrDiffusionUNet`]):
            The texture denoiser (with SPADE structure guidance), over the 3-channel image state.
        structure_unet ([`StrDiffusionUNet`]):
            The structure denoiser (no SPADE), over the 1-channel edge-map state.
        discriminator ([`StrDiffusionDiscriminator`]):
            Scores (texture, structure) pairs for the adaptive resampling of the early stage.
        scheduler ([`IRSDEScheduler`]):
            The mean-reverting SDE shared by both states.
        resolution (`int`, *optional*, defaults to 256):
            The models' working size: the image is resized to `resolution` x `resolution` and the hole pasted back
            at full resolution. `None` runs at the input size.
        canny_sigma (`float`, *optional*, defaults to 2.0):
            Gaussian sigma of the Canny edge map (2 at test time in the reference, 3 in its training loaders).
        early_stage_fraction (`float`, *optional*, defaults to 0.4):
            Levels t >= `early_stage_fraction * T` run the structure-guided early stage, the rest texture only.
        resample_u_max (`int`, *optional*, defaults to 6):
            At most `resample_u_max - 1` resampling iterations per step.
        resample_u_min (`int`, *optional*, defaults to 3):
            Iterations before a rejected candidate may stop the resampling.
        resample_jump (`int`, *optional*, defaults to 5):
            Resample at the levels that are multiples of `resample_jump`.
        resample_depth (`int`, *optional*, defaults to 5):
            How many levels a resampling iteration re-noises the structure state.
        refresh_discriminator_reference (`bool`, *optional*, defaults to `False`):
            Re-score the reference D_n after an accept/average (the reference keeps the step's first value).
        fix_resampling_levels (`bool`, *optional*, defaults to `False`):
            Re-noise with the levels the reverse passes use, and paste a fresh known structure per level.
        late_structure_rgb2gray (`bool`, *optional*, defaults to `False`):
            Guide the late stage with rgb2gray weights instead of the plain channel mean.
        accept_higher_discriminator (`bool`, *optional*, defaults to `False`):
            Accept a candidate whose discriminator score is higher (the reference accepts the lower one).
        discriminator_full_state (`bool`, *optional*, defaults to `False`):
            Show the discriminator the full texture state instead of the state times the mask.
        round_structure_input (`bool`, *optional*, defaults to `False`):
            Round instead of truncate to uint8 before the structure extraction.
    """

    model_cpu_offload_seq = "structure_unet->texture_unet->discriminator"
    _callback_tensor_inputs = ["latents", "structure_state"]

    def __init__(
        self,
        texture_unet: StrDiffusionUNet,
        structure_unet: StrDiffusionUNet,
        discriminator: StrDiffusionDiscriminator,
        scheduler: IRSDEScheduler,
        resolution: int | None = 256,
        canny_sigma: float = 2.0,
        early_stage_fraction: float = 0.4,
        resample_u_max: int = 6,
        resample_u_min: int = 3,
        resample_jump: int = 5,
        resample_depth: int = 5,
        refresh_discriminator_reference: bool = False,
        fix_resampling_levels: bool = False,
        late_structure_rgb2gray: bool = False,
        accept_higher_discriminator: bool = False,
        discriminator_full_state: bool = False,
        round_structure_input: bool = False,
    ):
        super().__init__()
        self.register_modules(
            texture_unet=texture_unet, structure_unet=structure_unet, discriminator=discriminator, scheduler=scheduler
        )
        self.register_to_config(
            resolution=resolution,
            canny_sigma=canny_sigma,
            early_stage_fraction=early_stage_fraction,
            resample_u_max=resample_u_max,
            resample_u_min=resample_u_min,
            resample_jump=resample_jump,
            resample_depth=resample_depth,
            refresh_discriminator_reference=refresh_discriminator_reference,
            fix_resampling_levels=fix_resampling_levels,
            late_structure_rgb2gray=late_structure_rgb2gray,
            accept_higher_discriminator=accept_higher_discriminator,
            discriminator_full_state=discriminator_full_state,
            round_structure_input=round_structure_input,
        )

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """`DiffusionPipeline.save_pretrained`, a full folder; the ASUKA pipelines' Hub formats are refused.

        `hub_format=True` would ship this file as Hub remote code, which may import only torch, diffusers, timm,
        numpy and PIL, while the structure maps need scikit-image; `light=True` points to a frozen backbone, and
        StrDiffusion has none (all its networks are its own).
        """
        refused = [f"`{name}=True`" for name in ("hub_format", "light") if kwargs.pop(name, False)]
        if refused:
            raise ValueError(
                f"StrDiffusionPipeline.save_pretrained does not take {' or '.join(refused)}: its code needs "
                "scikit-image, which Hub remote code may not import, and it has no frozen backbone to point to; "
                "accepted: `save_pretrained(folder)` (a full folder) with DiffusionPipeline's arguments."
            )
        super().save_pretrained(save_directory, **kwargs)

    # ------------------------------------------------------------------------------------ building blocks
    def _structure_step(self, xs, t, mu_s, noise, active=None):
        eps = self.structure_unet(xs, mu_s, t)
        return self.scheduler.reverse_sde_step(
            xs, self.scheduler.score_from_noise(eps, t), t, mu_s, noise=noise(xs, active)
        )

    def _texture_step(self, x, t, mu, structure, noise, active=None):
        eps = self.texture_unet(x, mu, t, structure)
        return self.scheduler.reverse_sde_step(
            x, self.scheduler.score_from_noise(eps, t), t, mu, noise=noise(x, active)
        )

    def _judge(self, t, x, structure, known):
        shown = x if self.config.discriminator_full_state else x * known
        times = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return self.discriminator(times, shown, structure, stddev_group=1)

    def check_inputs(
        self,
        batch_size: int,
        num_inference_steps: int | None,
        num_images_per_prompt: int,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        noise_tape: Iterable[torch.Tensor] | None,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> None:
        counts = {"num_images_per_prompt": num_images_per_prompt}
        if num_inference_steps is not None:
            counts["num_inference_steps"] = num_inference_steps
        self._check_common_inputs(output_type, counts, callback_on_step_end_tensor_inputs)
        outputs = batch_size * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != outputs:
            raise ValueError(f"got {len(generator)} generators for {outputs} outputs; expected one per output.")
        if noise_tape is not None and generator is not None:
            raise ValueError("pass either `generator` or `noise_tape`, not both.")

    # ------------------------------------------------------------------------------------------- sampler
    @torch.no_grad()
    @replace_example_docstring(example_docstring=EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        num_inference_steps: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        initial_structure_state: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        noise_tape: Iterable[torch.Tensor] | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> StrDiffusionPipelineOutput | tuple:
        r"""Inpaint `image` where `mask_image` is white.

        StrDiffusion has no text conditioning, so diffusers' `prompt`, `prompt_embeds`, `negative_prompt_embeds`,
        `guidance_scale` and `do_classifier_free_guidance` have no meaning here and are not accepted; the structure
        guidance is built in (the structure SDE's state steers the texture denoiser).

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or a `list` of them):
                The image(s) to inpaint, of any size: PIL images or paths, numpy arrays (H, W, C) / (B, H, W, C)
                (uint8, or float in [0, 1]), tensors (C, H, W) / (B, C, H, W) in [0, 1]. The structure maps (gray
                level and Canny edges) are computed on 8-bit images, as the reference does: float inputs are
                truncated to 8 bits for them, so a float input of an 8-bit image gives exactly that image's result.
            mask_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or a `list` of them):
                White (> 0.5) = repaint. The image's size, or the same aspect ratio; one mask, or one per image.
            num_inference_steps (`int`, *optional*):
                `None` runs all T levels of the scheduler with adaptive resampling (the reference sampler). Fewer
                steps jump between levels with the exact OU posterior (`IRSDEScheduler.step_jump`) and skip the
                resampling.
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Samples per input image; the outputs of one image are consecutive.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                One generator, or one per output (`len(image) * num_images_per_prompt`); with one per output, each
                output equals the run of its image alone with its generator.
            latents (`torch.Tensor`, *optional*):
                The texture SDE's start state x_T, (outputs, 3, R, R) at the working size R: the state that becomes
                the output, under diffusers' name for it (the pipeline works in pixel space, there is no VAE). The
                IR-SDE starts around the masked image, at `image * known + max_sigma * noise`. Drawn (first) when not
                given.
            initial_structure_state (`torch.Tensor`, *optional*):
                The structure SDE's start state, (outputs, 1, R, R): around the masked Canny map,
                `edges * known + max_sigma * noise`. Drawn (after the texture state) when not given.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` (in [0, 1], at the input size) or `"latent"` (the final texture state
                `latents` as it is: unclamped, at the working size, before the known pixels are pasted back; the
                reference saves `image * known + latents * hole`).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return a [`StrDiffusionPipelineOutput`] instead of a tuple.
            noise_tape (`Iterable[torch.Tensor]`, *optional*):
                Standard-normal draws consumed in the reference's order instead of sampling (conformance tests
                replay the reference's recorded draws); not together with `generator`.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step, timestep, callback_kwargs)` with the
                tensors named in `callback_on_step_end_tensor_inputs` (a callback object brings its own
                `tensor_inputs`); the tensors it returns replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`):
                Names from `_callback_tensor_inputs`: `latents` (the texture state, the tensor `latents=` starts)
                and `structure_state` (the structure SDE's state).

        Examples:

        Returns:
            [`StrDiffusionPipelineOutput`] or `tuple`: the images and, per output, the (t, iteration, decision) of
            every adaptive-resampling iteration; as `(images, decisions)` when `return_dict` is False.
        """
        callback_on_step_end_tensor_inputs = self.step_callback_tensor_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        self._interrupt = False
        cfg = self.config
        device = self._execution_device
        dtype = self.texture_unet.dtype
        total = self.scheduler.config.num_train_timesteps

        # 1. Check and standardise inputs, one row per output; move to the working resolution (image bilinear,
        #    mask nearest, like the reference)
        pixels, hole = standardise_inputs(image, mask_image)
        self.check_inputs(
            batch_size=pixels.shape[0],
            num_inference_steps=num_inference_steps,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            output_type=output_type,
            noise_tape=noise_tape,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        pixels = pixels.repeat_interleave(num_images_per_prompt, dim=0)
        hole = hole.repeat_interleave(num_images_per_prompt, dim=0)
        batch, _, height, width = pixels.shape
        work_y, work_hole = pixels, hole
        if cfg.resolution is not None and (height, width) != (cfg.resolution, cfg.resolution):
            size = (cfg.resolution, cfg.resolution)
            work_y = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
            work_hole = F.interpolate(hole, size=size, mode="nearest")

        # 2. Structure extraction (grayscale + Canny) and the two SDE means
        gray, edges = extract_structure(work_y, cfg.canny_sigma, cfg.round_structure_input)
        y = work_y.to(device, dtype)
        known = (1 - work_hole).to(device, dtype)
        gray, edges = gray.to(device, dtype), edges.to(device, dtype)
        mu, mu_s, xs_known = y * known, edges * known, gray * known

        # 3. Start states (texture first, then structure, as the reference draws them), unless given
        noise = _Noise(generator, noise_tape, device)
        x = self._initial_state("latents", latents, mu, noise)
        xs = self._initial_state("initial_structure_state", initial_structure_state, mu_s, noise)

        # 4. Timesteps: all T levels (reference) or an evenly spaced subset
        self.scheduler.set_timesteps(num_inference_steps, device="cpu")
        timesteps = [int(t) for t in self.scheduler.timesteps]
        self._num_timesteps = len(timesteps)
        full = len(timesteps) == total
        boundary = int(cfg.early_stage_fraction * total)
        decisions: list[list[tuple]] = [[] for _ in range(batch)]

        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                s = timesteps[i + 1] if i + 1 < len(timesteps) else 0
                if t >= boundary:
                    # 5. Early stage: structure step, guided texture step, adaptive resampling
                    xs_opt = self.scheduler.add_noise(xs_known, noise(xs_known), s, mu_s)  # s = t - 1 with all steps
                    xs = xs_opt * known + xs * (1 - known)
                    if full:
                        xs_t = self._structure_step(xs, t, mu_s, noise)
                        x_upd = self._texture_step(x, t, mu, xs_t, noise)
                        x_upd, xs_t = self._resample(
                            x, x_upd, xs_t, xs_opt, xs_known, t, mu, mu_s, known, noise, decisions
                        )
                    else:
                        xs_t = self.scheduler.step_jump(
                            self.structure_unet(xs, mu_s, t), t, s, xs, mu_s, noise=noise(xs)
                        )
                        eps = self.texture_unet(x, mu, t, xs_t)
                        x_upd = self.scheduler.step_jump(eps, t, s, x, mu, noise=noise(x))
                    x = x_upd
                    xs = xs_opt * known + xs_t * (1 - known)
                else:
                    # 6. Late stage: texture only, guided by the texture state's own gray level
                    if cfg.late_structure_rgb2gray:
                        weights = torch.tensor(RGB2GRAY, device=device, dtype=dtype).view(1, 3, 1, 1)
                        guide = (x * weights).sum(1, keepdim=True)
                    else:
                        guide = x.mean(dim=1, keepdim=True)
                    if full:
                        x = self._texture_step(x, t, mu, guide, noise)
                    else:
                        x = self.scheduler.step_jump(self.texture_unet(x, mu, t, guide), t, s, x, mu, noise=noise(x))
                if callback_on_step_end is not None:
                    state = {"latents": x, "structure_state": xs}
                    state = self._step_callback(callback_on_step_end, i, t, state, callback_on_step_end_tensor_inputs)
                    x, xs = state["latents"], state["structure_state"]
                progress.update()

        # 7. Paste the known pixels back (at the working size, then at full resolution), except for the latents
        if output_type == "latent":
            images = x
        else:
            result = (y * known + x * (1 - known)).clamp(0, 1).float().cpu()
            if result.shape[-2:] != (height, width):
                result = F.interpolate(result, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
            images = to_output_type(pixels * (1 - hole) + result * hole, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, decisions
        return StrDiffusionPipelineOutput(images=images, decisions=decisions)

    def _initial_state(self, name: str, given: torch.Tensor | None, mean: torch.Tensor, noise: "_Noise"):
        """A start state: `given` (checked against the mean's shape) or `mean + max_sigma * noise` drawn now."""
        if given is None:
            return self.scheduler.noise_state(mean, noise=noise(mean))
        self._check_start_state(name, given, mean.shape, "outputs, channels, working size")
        return given.to(mean.device, mean.dtype)

    def _resample(self, x, x_upd, xs_t, xs_opt, xs_known, t, mu, mu_s, known, noise, decisions):
        """Adaptive resampling of one early step (reference `utils/sde_utils.py:284-330`), per sample."""
        cfg = self.config
        total = self.scheduler.config.num_train_timesteps
        depth = cfg.resample_depth if t % cfg.resample_jump == 0 else 0
        if depth + t > total:
            depth = total - t + 1
        if depth == 0:
            return x_upd, xs_t
        d_n = self._judge(t, x_upd, xs_t, known)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        shift = 1 if cfg.fix_resampling_levels else 0
        for i in range(1, cfg.resample_u_max):
            if not active.any():
                break
            xs1 = xs_t
            for k in range(depth):
                xs1 = self.scheduler.forward_step(xs1, t - 1 + k + shift, mu_s, noise=noise(xs1, active))
            for level in range(t + depth - 1, t - 1, -1):
                paste = xs_opt
                if cfg.fix_resampling_levels:
                    paste = self.scheduler.add_noise(xs_known, noise(xs1, active), level, mu_s)
                xs1 = paste * known + xs1 * (1 - known)
                xs1 = self._structure_step(xs1, level, mu_s, noise, active)
            x_tmp = self._texture_step(x, t, mu, xs1, noise, active)
            d_p = self._judge(t, x_tmp, xs1, known)
            better = d_p > d_n if cfg.accept_higher_discriminator else d_p < d_n
            accept = active & better
            stop = active & ~better & (i >= cfg.resample_u_min)
            average = active & ~better & ~stop
            view = lambda m: m.view(-1, 1, 1, 1)  # noqa: E731
            x_upd = torch.where(view(accept), x_tmp, torch.where(view(average), (x_upd + x_tmp) / 2, x_upd))
            xs_t = torch.where(view(accept), xs1, torch.where(view(average), (xs1 + xs_t) / 2, xs_t))
            for b in torch.nonzero(active).flatten().tolist():
                decisions[b].append((t, i, "accept" if accept[b] else "stop" if stop[b] else "average"))
            if cfg.refresh_discriminator_reference:
                d_n = torch.where(accept | average, self._judge(t, x_upd, xs_t, known), d_n)
            active = active & ~stop
        return x_upd, xs_t
