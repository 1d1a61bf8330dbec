"""CLIP's text tower (Radford et al., 2021) for models that classify by class-name embeddings.

The transformer is built from timm blocks, as the image towers of this toolkit are; weights come
from OpenAI CLIP state dicts (`token_embedding.weight`, `transformer.resblocks.N.*`, `ln_final.*`,
`text_projection`) through `convert_clip_text`. Class names become token ids with CLIP's byte-pair
encoding, taken from open_clip (its vocabulary ships inside the package: nothing is downloaded).
"""
from __future__ import annotations

import re
from functools import lru_cache, partial

import torch
from timm.layers import LayerNorm, QuickGELU
from timm.models.vision_transformer import Block
from torch import nn

CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408


@lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(texts: list[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """(len(texts), context_length) token ids: start, the text's BPE tokens, end, then zeros (as OpenAI CLIP's
    `clip.tokenize`, which refuses a text that does not fit instead of truncating it)."""
    tok = _tokenizer()
    rows = [[tok.sot_token_id, *tok.encode(text), tok.eot_token_id] for text in texts]
    ids = torch.zeros(len(rows), context_length, dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row) > context_length:
            raise ValueError(f"class name {texts[i]!r} is {len(row)} tokens, over the context length {context_length}")
        ids[i, :len(row)] = torch.tensor(row)
    return ids


class CLIPTextEncoder(nn.Module):
    """Token ids (K, L) -> one embedding per text (K, embed_dim), read at the end-of-text token (CLIP's
    largest id), after causal self-attention."""

    def __init__(self, embed_dim: int = 512, width: int = 512, depth: int = 12, num_heads: int = 8,
                 context_length: int = CONTEXT_LENGTH, vocab_size: int = VOCAB_SIZE):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList([
            Block(width, num_heads, qkv_bias=True, act_layer=QuickGELU, norm_layer=partial(LayerNorm, eps=1e-5))
            for _ in range(depth)])
        self.norm = LayerNorm(width, eps=1e-5)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self._init_weights(width, depth)

    def _init_weights(self, width: int, depth: int) -> None:
        """CLIP's initialisation (for training from scratch; released weights replace it)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=width ** -0.5)
            nn.init.normal_(block.attn.proj.weight, std=(2 * depth * width) ** -0.5)
            nn.init.normal_(block.mlp.fc1.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=(2 * depth * width) ** -0.5)
        nn.init.normal_(self.proj.weight, std=width ** -0.5)

    def extra_repr(self) -> str:
        return "causal=True, pool='end_of_text'"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # causal attention: the padding after the last end-of-text token changes no output we read
        end = tokens.argmax(dim=-1)
        tokens = tokens[:, :int(end.max()) + 1]
        x = self.token_embedding(tokens) + self.pos_embed[:tokens.shape[1]]
        for block in self.blocks:
            x = block(x, is_causal=True)
        x = x[torch.arange(x.shape[0], device=x.device), end]
        return self.proj(self.norm(x))


# OpenAI CLIP's text-tower names -> ours (the residual-block part is shared with CLIP-layout towers)
CLIP_BLOCK_RENAMES = (
    (r"\.ln_1\.", ".norm1."), (r"\.ln_2\.", ".norm2."),
    (r"\.attn\.in_proj_(weight|bias)$", r".attn.qkv.\1"), (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."),
)
_TEXT_RENAMES = (
    (r"^positional_embedding$", "pos_embed"), (r"^transformer\.resblocks\.", "blocks."),
    (r"^ln_final\.", "norm."), (r"^text_projection$", "proj.weight"),
) + CLIP_BLOCK_RENAMES


def rename(key: str, renames) -> str:
    for pattern, repl in renames:
        key = re.sub(pattern, repl, key)
    return key


def convert_clip_text(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower of an OpenAI CLIP state dict (any other keys are left out) in CLIPTextEncoder's keys."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
                               "text_projection")):
            continue
        out[rename(key, _TEXT_RENAMES)] = value.t() if key == "text_projection" else value
    return out


def clip_text_args(sd: dict[str, torch.Tensor]) -> dict:
    """CLIPTextEncoder's arguments for the text tower of an OpenAI CLIP state dict (heads: width / 64, as CLIP;
    at least one for narrower test towers)."""
    width = sd["ln_final.weight"].shape[0]
    blocks = {k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}
    return dict(embed_dim=sd["text_projection"].shape[1], width=width, depth=len(blocks), num_heads=max(1, width // 64),
                context_length=sd["positional_embedding"].shape[0], vocab_size=sd["token_embedding.weight"].shape[0])
