"""Site names -> where their vectors sit in the store.

``resid_pre.L`` and ``resid_post.L`` live in array ``resid`` at residual index
L and L+1; ``final`` is its own array; ``resid_mid``/``attn_out``/``mlp_out``
are arrays indexed by block. The array attribute ``layers`` (copied into the
manifest) says which indices were stored, in order along the layer axis.
"""

from __future__ import annotations

from dataclasses import dataclass

from embwalk.errors import SiteError
from embwalk.models.sites import Site, parse_sites, stored_stack
from embwalk.store.layout import SEQUENCE_ARRAYS


@dataclass(frozen=True)
class VectorSite:
    name: str  # canonical site name, e.g. resid_post.6
    array: str  # array name in the manifest, e.g. resid
    index: int | None  # position on the array's layer axis; None for arrays without one (final)


def vector_sites(manifest: dict, names: str | list[str] | tuple[str, ...]) -> list[VectorSite]:
    """Resolve site names (ours or TransformerLens aliases; ``resid_post`` = every layer) in the order given."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise SiteError("no sites given; name one, e.g. resid_post.6")
    n_layers = manifest["model"]["n_layers"]
    out: dict[str, VectorSite] = {}
    for raw in names:
        for site in parse_sites([str(raw)], n_layers, stored_stack(manifest)):
            resolved = _locate(manifest, site, str(raw))
            out.setdefault(resolved.name, resolved)
    return list(out.values())


def pattern_index(manifest: dict, layers: list[int | str] | None,
                  kind: str = "attn_pattern") -> tuple[list[int], list[int]]:
    """Block indices and their positions on the layer axis of ``kind``'s array (``pattern`` for
    attn_pattern, layout.SEQUENCE_ARRAYS for the rest; all its captured layers by default)."""
    spec = sequence_spec(manifest, kind)
    stored = list(spec["layers"])
    if layers is None:
        return stored, list(range(len(stored)))
    n_layers = manifest["model"]["n_layers"]
    blocks = []
    for item in layers:
        if isinstance(item, str) and not item.lstrip("-").isdigit():
            sites = parse_sites([item], n_layers, stored_stack(manifest))
            if any(s.kind != kind for s in sites):
                raise SiteError(f"{item!r} is not an attention site of kind {kind}; use {kind}.L or a layer number")
            blocks += [s.layer for s in sites]
        else:
            index = int(item)
            if not -n_layers <= index < n_layers:
                raise SiteError(f"attention layer {index} is past the model's depth ({n_layers} layers)")
            blocks.append(index % n_layers)
    missing = [b for b in blocks if b not in stored]
    if missing:
        what = "attention" if kind == "attn_pattern" else kind
        raise SiteError(f"{kind}.{missing[0]} is not in this store; it has {what} of layers {stored}")
    return blocks, [stored.index(b) for b in blocks]


def sequence_spec(manifest: dict, kind: str = "attn_pattern") -> dict:
    """The manifest's entry for the per-sequence array of site kind ``kind``; SiteError if not stored."""
    if kind not in SEQUENCE_ARRAYS:
        raise SiteError(f"{kind!r} is not stored per sequence; kinds: {', '.join(SEQUENCE_ARRAYS)}")
    spec = manifest["arrays"].get(SEQUENCE_ARRAYS[kind])
    if spec is None and kind == "attn_pattern":
        raise SiteError(
            f"this store has no attention patterns (sites: {_stored(manifest)}); extract with capture=attention"
        )
    if spec is None:
        raise SiteError(f"this store has no {kind} (sites: {_stored(manifest)}); extract with {kind} sites")
    return spec


def _locate(manifest: dict, site: Site, raw: str) -> VectorSite:
    arrays = manifest["arrays"]
    if site.kind in SEQUENCE_ARRAYS:
        raise SiteError(f"{raw!r} is attention, not a per-token vector: use store.attention(seq, kind={site.kind!r})")
    if site.kind == "final":
        if "final" not in arrays:
            raise SiteError(f"site 'final' is not in this store; it has {_stored(manifest)}")
        return VectorSite("final", "final", None)
    if site.kind in ("resid_pre", "resid_post"):
        array, index = "resid", site.residual_index
    else:
        array, index = site.kind, site.layer
    stored = arrays.get(array, {}).get("layers", [])
    if index not in stored:
        raise SiteError(f"site {site.name} is not in this store; it has {_stored(manifest)}")
    return VectorSite(site.name, array, stored.index(index))


def _stored(manifest: dict) -> str:
    sites = [s for s in manifest["sites"] if s.partition(".")[0] not in SEQUENCE_ARRAYS]
    if len(sites) > 6:
        return f"{', '.join(sites[:3])}, ..., {', '.join(sites[-2:])}"
    return ", ".join(sites) or "no per-token vectors"
