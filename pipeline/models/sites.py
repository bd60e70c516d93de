"""Capture-site names: parse user input into architecture-neutral sites.

A site is a (kind, layer) pair. Users write DESIGN.md names (``resid_post.3``,
``attn_pattern.*``) or TransformerLens hook names (``blocks.3.hook_resid_post``);
both resolve to the same ``Site``. Wildcards and bare kinds expand to every
layer, so ``resid_post`` means ``resid_post.0 ... resid_post.{L-1}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from embwalk.errors import SiteError

# resid_cross and cross_pattern exist in a T5 decoder only, and the score terms (attn_score,
# attn_content, attn_bias, cross_score) in models with a learned position bias only (T5):
# Family.check_kinds refuses them elsewhere.
SCORE_KINDS = ("attn_score", "attn_content", "attn_bias", "cross_score")
# router_logits: a mixture-of-experts block's router (Mixtral, Qwen2-MoE), [token, expert].
LAYERED_KINDS = ("resid_pre", "resid_mid", "resid_cross", "resid_post", "attn_pattern", "cross_pattern", "attn_out",
                 "mlp_out", "router_logits") + SCORE_KINDS
UNLAYERED_KINDS = ("final",)
KINDS = LAYERED_KINDS + UNLAYERED_KINDS

# TransformerLens hook suffixes -> our kinds.
_TL_BLOCK_HOOKS = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_resid_mid_cross": "resid_cross",
    "attn.hook_pattern": "attn_pattern",
    "cross_attn.hook_pattern": "cross_pattern",
    "attn.hook_attn_scores": "attn_score",
    "cross_attn.hook_attn_scores": "cross_score",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
}
_TL_GLOBAL_HOOKS = {"ln_final.hook_normalized": "final", "hook_embed": "resid_pre.0"}

# An encoder-decoder model's stacks: seq2seq.py's prefix, TransformerLens' (HookedEncoderDecoder).
_STACKS = {"enc": "encoder", "dec": "decoder"}
# The stack a family's store holds when its manifest names none (families.py: T5's encoder).
_DEFAULT_STACKS = {"t5": "enc"}


def stored_stack(manifest: dict) -> str | None:
    """The stack of an encoder-decoder model a store holds ("enc", "dec"); None for other models."""
    model = manifest["model"]
    return model.get("stack") or _DEFAULT_STACKS.get(model.get("family"))

_OURS = re.compile(r"^(?P<kind>[a-z_]+)(?:\.(?P<layer>\*|-?\d+))?$")
_TL = re.compile(r"^blocks\.(?P<layer>\*|\d+)\.(?P<hook>.+)$")


@dataclass(frozen=True, order=True)
class Site:
    kind: str
    layer: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"

    @property
    def transformer_lens_name(self) -> str:
        """The TransformerLens hook of this site (``blocks.3.hook_resid_post``, ``ln_final.hook_normalized``)."""
        if self.kind == "final":
            return "ln_final.hook_normalized"
        hook = {kind: suffix for suffix, kind in _TL_BLOCK_HOOKS.items()}[self.kind]
        return f"blocks.{self.layer}.{hook}"

    @property
    def residual_index(self) -> int | None:
        """Index on the residual axis: 0 = embeddings, i = output of block i-1."""
        if self.kind == "resid_pre":
            return self.layer
        if self.kind == "resid_post":
            return self.layer + 1
        return None


def parse_sites(names: list[str] | tuple[str, ...] | str, n_layers: int, stack: str | None = None) -> list[Site]:
    """Resolve site names to a sorted, de-duplicated list of sites.

    Raises SiteError naming the offending input for unknown names and layers
    past the model's depth (negative layers count from the end, as in Python).
    ``stack``: the one stack of an encoder-decoder model a store holds ("enc": T5's encoder,
    Family.stack); names may carry its prefix (``enc.resid_post.3``, ``encoder.3.hook_resid_post``),
    and the other stack's names are a SiteError (its token axis is not stored).
    """
    if isinstance(names, str):
        names = [n for n in re.split(r"[,\s]+", names) if n]
    sites: set[Site] = set()
    for raw in names:
        raw = str(raw).strip()
        sites.update(_parse_one(_unstacked(raw, stack) if stack else raw, n_layers))
    if not sites:
        raise SiteError("no capture sites given")
    return sorted(sites, key=lambda s: (KINDS.index(s.kind), s.layer if s.layer is not None else -1))


def _parse_one(raw: str, n_layers: int) -> list[Site]:
    if raw in _TL_GLOBAL_HOOKS:
        raw = _TL_GLOBAL_HOOKS[raw]
    tl = _TL.match(raw)
    if tl:
        kind = _TL_BLOCK_HOOKS.get(tl["hook"])
        if kind is None:
            raise SiteError(f"unknown TransformerLens hook {raw!r}; known: {_known()}")
        raw = f"{kind}.{tl['layer']}"
    m = _OURS.match(raw)
    if not m or m["kind"] not in KINDS:
        raise SiteError(f"unknown capture site {raw!r}; known: {_known()}")
    kind, layer = m["kind"], m["layer"]
    if kind in UNLAYERED_KINDS:
        if layer is not None:
            raise SiteError(f"capture site {raw!r} takes no layer index")
        return [Site(kind)]
    if layer is None or layer == "*":
        return [Site(kind, i) for i in range(n_layers)]
    index = int(layer)
    if not -n_layers <= index < n_layers:
        raise SiteError(
            f"layer {index} in capture site {raw!r} is past the model's depth "
            f"({n_layers} layers: 0..{n_layers - 1})"
        )
    return [Site(kind, index % n_layers)]


def _unstacked(raw: str, stack: str) -> str:
    """``raw`` without the stored stack's prefix (a TransformerLens name as its decoder-only form)."""
    head, _, rest = raw.partition(".")
    for ours, tl in _STACKS.items():
        if head in (ours, tl, f"{tl}_final_ln"):
            if ours != stack:
                kept = _STACKS[stack]
                raise SiteError(f"capture site {raw!r} is in the {tl}: this store holds the {kept}'s tokens; "
                                f"write the {tl}'s sites to a second store")
            return {ours: rest, tl: f"blocks.{rest}"}.get(head, f"ln_final.{rest}")
    return raw


def is_decoder_site(name: str) -> bool:
    """Whether a site name is an encoder-decoder model's decoder's (``dec.``, ``decoder.``, ``decoder_final_ln.``)."""
    return str(name).strip().partition(".")[0] in ("dec", "decoder", "decoder_final_ln")


def sites_stack(names: list[str] | tuple[str, ...] | str) -> str | None:
    """"dec" when the site names are an encoder-decoder model's decoder sites, "both" when they
    are the decoder's and others (the encoder's: a two-stack store, one store per token axis,
    pipeline/extraction/stacks.py), None when none is the decoder's."""
    if isinstance(names, str):
        names = [n for n in re.split(r"[,\s]+", names) if n]
    dec = [n for n in names if is_decoder_site(n)]
    if not dec:
        return None
    return "dec" if len(dec) == len(names) else "both"


def _known() -> str:
    return (
        "resid_pre.L, resid_mid.L, resid_post.L, attn_pattern.L, attn_out.L, mlp_out.L, final "
        "(L an index, '*' or omitted for all), or blocks.L.hook_resid_post-style aliases; T5 also "
        "resid_cross.L, cross_pattern.L and the score terms attn_score.L, attn_content.L, attn_bias.L, cross_score.L; "
        "mixture-of-experts models router_logits.L"
    )
