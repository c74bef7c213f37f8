"""A tiny transformers `ViTMAEForPreTraining` in facebook's MAE format: what `asuka.convert mae` converts and the
training recipe starts from."""

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding


TINY_VITMAE = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
    layer_norm_eps=1e-5,
)


def mae_sincos_table(width: int, grid: int) -> torch.Tensor:
    """MAE's fixed table (cls row first) as transformers builds it for pretrained weights (halves rotated)."""
    table = build_2d_sinusoidal_position_embedding(grid, grid, embed_dim=width, cls_token=True)
    return torch.cat([table[..., width // 2 :], table[..., : width // 2]], dim=-1).unsqueeze(0)


def tiny_vitmae(random_weights: bool = False) -> ViTMAEForPreTraining:
    """The tiny ViTMAE (seed 0) with MAE's sin-cos tables; `random_weights` replaces every other weight, LayerNorms
    too, with seeded noise, so that no mapping can pass by luck."""
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(**TINY_VITMAE)).eval()
    grid = TINY_VITMAE["image_size"] // TINY_VITMAE["patch_size"]
    with torch.no_grad():
        if random_weights:
            for name, param in model.named_parameters():
                param.copy_(torch.randn_like(param) * 0.2 + (1.0 if "layernorm" in name or "norm.w" in name else 0.0))
        model.vit.embeddings.position_embeddings.copy_(mae_sincos_table(TINY_VITMAE["hidden_size"], grid))
        model.decoder.decoder_pos_embed.copy_(mae_sincos_table(TINY_VITMAE["decoder_hidden_size"], grid))
    return model
