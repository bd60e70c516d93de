"""T5-family capture: every site equals transformers' own hidden states and eager attentions."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T

from embwalk.errors import SiteError
from embwalk.models.seq2seq import SINK_ATTR, Seq2SeqCapturer, StackSite, logit_scale, parse_seq2seq_sites

REL = 1e-5
ENC_LEN, DEC_LEN = 20, 18  # longer than relative_attention_max_distance: the log buckets are used

_COMMON = dict(
    vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=16, decoder_start_token_id=0,
)
TINY = {
    "t5": (T.T5ForConditionalGeneration, lambda: T.T5Config(**_COMMON)),
    # T5 v1.1 / Flan-T5: gated GELU, untied head, no d_model**-0.5 before it
    "t5_v1_1": (T.T5ForConditionalGeneration, lambda: T.T5Config(feed_forward_proj="gated-gelu",
                                                                  tie_word_embeddings=False, **_COMMON)),
    "mt5": (T.MT5ForConditionalGeneration, lambda: T.MT5Config(**_COMMON)),
    "umt5": (T.UMT5ForConditionalGeneration, lambda: T.UMT5Config(**_COMMON)),  # a bias in every layer
}


def tiny_seq2seq(name: str, vocab_size: int | None = None) -> torch.nn.Module:
    cls, config = TINY[name]
    config = config()
    config.vocab_size = vocab_size or config.vocab_size  # a tokenizer's size (tests/models/t5_checkpoints.py)
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # random init leaves the bias small next to q·k: make both terms matter
        for module in model.modules():
            if getattr(module, "has_relative_attention_bias", False):
                module.relative_attention_bias.weight.mul_(8)
    return model


@pytest.fixture(scope="module", params=list(TINY))
def model(request):
    return tiny_seq2seq(request.param)


def batch(padded: bool):
    g = torch.Generator().manual_seed(1)
    ids, dids = torch.randint(2, 128, (3, ENC_LEN), generator=g), torch.randint(2, 128, (3, DEC_LEN), generator=g)
    mask, dmask = torch.ones_like(ids), torch.ones_like(dids)
    if padded:  # right padding, both stacks, different lengths per row
        mask[1, 13:], mask[2, 6:] = 0, 0
        dmask[1, 10:], dmask[2, 4:] = 0, 0
    return ids, mask, dids, dmask


def capture(model, sites, ids, mask, dids, dmask, **kwargs):
    with Seq2SeqCapturer(model, sites, **kwargs) as cap:
        return cap.run(ids, mask, dids, dmask)


@torch.no_grad()
def reference(model, ids, mask, dids, dmask):
    """transformers' own hidden states and eager attentions; resid index L is the pre-norm last block output."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    kwargs = dict(attention_mask=mask, decoder_attention_mask=dmask, use_cache=False)
    out = ref(input_ids=ids, decoder_input_ids=dids, output_hidden_states=True, output_attentions=True, **kwargs)
    # hidden_states[-1] is after each stack's final norm: the last block's own output comes from
    # the same stacks with their final norms replaced by identity.
    ref.encoder.final_layer_norm = ref.decoder.final_layer_norm = torch.nn.Identity()
    enc_pre = ref.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    dec_pre = ref.decoder(
        input_ids=dids, attention_mask=dmask, encoder_hidden_states=out.encoder_last_hidden_state,
        encoder_attention_mask=mask,
    ).last_hidden_state
    return {
        "enc.resid": list(out.encoder_hidden_states[:-1]) + [enc_pre], "enc.final": out.encoder_last_hidden_state,
        "dec.resid": list(out.decoder_hidden_states[:-1]) + [dec_pre], "dec.final": out.decoder_hidden_states[-1],
        "enc.attn_pattern": out.encoder_attentions, "dec.attn_pattern": out.decoder_attentions,
        "dec.cross_pattern": out.cross_attentions, "logits": out.logits,
    }


def rel_err(got: torch.Tensor, want: torch.Tensor, valid: torch.Tensor) -> float:
    return float((got - want)[valid].abs().max() / want[valid].abs().max())


def test_parse_sites():
    sites = parse_seq2seq_sites("enc.resid_post.-1, dec.cross_pattern.*, dec.final", 2, 3)
    expected = ["dec.final"] + [f"dec.cross_pattern.{i}" for i in range(3)] + ["enc.resid_post.1"]
    assert [s.name for s in sites] == expected
    assert StackSite("enc", "resid_post", 1).residual_index == 2 and sites[0].array == "dec.final"
    aliases = parse_seq2seq_sites(
        ["hook_embed", "encoder.1.hook_resid_post", "decoder.*.hook_resid_mid_cross",
         "decoder.0.cross_attn.hook_pattern", "encoder.0.attn.hook_attn_scores", "decoder_final_ln.hook_normalized"],
        2, 3)
    assert {s.name for s in aliases} == {
        "enc.resid_pre.0", "enc.resid_post.1", "dec.resid_cross.0", "dec.resid_cross.1", "dec.resid_cross.2",
        "dec.cross_pattern.0", "enc.attn_score.0", "dec.final"}
    for bad in ["resid_post.1", "enc.resid_cross.0", "enc.cross_pattern", "dec.attn_pattern.3", "enc.final.0",
                "dec.cross_bias.0", "x.resid_pre.0", "encoder.0.hook_nope"]:
        with pytest.raises(SiteError):
            parse_seq2seq_sites([bad], 2, 3)


@pytest.mark.parametrize("padded", [False, True])
def test_residual_sites_match_transformers(model, padded):
    ids, mask, dids, dmask = data = batch(padded)
    sites = ["enc.resid_pre.0", "enc.resid_post", "enc.final", "dec.resid_pre.0", "dec.resid_post", "dec.final"]
    got, want = capture(model, sites, *data), reference(model, *data)
    valid = {"enc": mask.bool(), "dec": dmask.bool()}
    for stack in ("enc", "dec"):
        n = len(want[f"{stack}.resid"])
        assert got[f"{stack}.resid"].shape == (3, ids.shape[1] if stack == "enc" else DEC_LEN, n, 32)
        for i in range(n):
            err = rel_err(got[f"{stack}.resid"][:, :, i], want[f"{stack}.resid"][i], valid[stack])
            assert err < REL, f"{stack}.resid {i}: {err}"
        assert rel_err(got[f"{stack}.final"], want[f"{stack}.final"], valid[stack]) < REL


@pytest.mark.parametrize("padded", [False, True])
def test_patterns_match_eager(model, padded):
    ids, mask, dids, dmask = data = batch(padded)
    got = capture(model, ["enc.attn_pattern", "dec.attn_pattern", "dec.cross_pattern"], *data)
    want = reference(model, *data)
    rows = {"enc": mask.bool(), "dec": dmask.bool()}  # padding query rows are never stored
    for name in ("enc.attn_pattern", "dec.attn_pattern", "dec.cross_pattern"):
        assert got[name].shape[1] == len(want[name])
        for layer, expected in enumerate(want[name]):
            diff = (got[name][:, layer] - expected).abs().amax(dim=(1, 3))[rows[name[:3]]].max()
            assert diff < 1e-6, f"{name} {layer}: {diff}"
        sums = got[name].sum(-1).permute(0, 3, 1, 2)[rows[name[:3]]]  # [valid queries, layer, head]
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6)
    if padded:  # padding keys get exactly nothing
        assert got["dec.cross_pattern"][1, ..., 13:].abs().max() == 0 == got["enc.attn_pattern"][2, ..., 6:].max()


def test_padding_never_changes_real_tokens(model):
    ids, mask, dids, dmask = data = batch(True)
    sites = ["enc.resid_post", "enc.final", "enc.attn_pattern", "dec.resid_post", "dec.resid_cross", "dec.final",
             "dec.attn_pattern", "dec.cross_pattern"]
    padded = capture(model, sites, *data)
    for row in range(3):
        n, m = int(mask[row].sum()), int(dmask[row].sum())
        alone = capture(model, sites, ids[row : row + 1, :n], None, dids[row : row + 1, :m], None)
        for name, value in alone.items():
            if "pattern" in name:
                keys = n if name.startswith("enc") or "cross" in name else m
                real = padded[name][row : row + 1, ..., : value.shape[-2], :keys]
            else:
                real = padded[name][row : row + 1, : value.shape[1]]
            assert (real - value).abs().max() <= REL * value.abs().max(), name


def test_sublayer_outputs_add_up(model):
    data = batch(True)
    sites = ["enc.resid_pre", "enc.resid_mid", "enc.resid_post", "enc.attn_out", "enc.mlp_out",
             "dec.resid_pre", "dec.resid_mid", "dec.resid_cross", "dec.resid_post",
             "dec.attn_out", "dec.cross_out", "dec.mlp_out"]
    got = capture(model, sites, *data)
    # the residual stream through each block, and the sublayer output added at each step
    stages = {"enc": (["resid_mid"], ["attn_out", "mlp_out"]),
              "dec": (["resid_mid", "resid_cross"], ["attn_out", "cross_out", "mlp_out"])}
    for stack, (middle, outputs) in stages.items():
        resid = got[f"{stack}.resid"]
        for b in range(resid.shape[2] - 1):
            stream = [resid[:, :, b], *(got[f"{stack}.{k}"][:, :, b] for k in middle), resid[:, :, b + 1]]
            for i, out in enumerate(outputs):
                before, delta, after = stream[i], got[f"{stack}.{out}"][:, :, b], stream[i + 1]
                assert (before + delta - after).abs().max() < REL * after.abs().max(), f"{stack} {b} {out}"
                assert delta.abs().max() > 0


def test_dec_final_is_before_the_lm_head_scale(model):
    data = batch(True)
    got, want = capture(model, ["dec.final"], *data), reference(model, *data)
    with torch.no_grad():
        logits = model.lm_head(got["dec.final"] * logit_scale(model))
    assert rel_err(logits, want["logits"], data[3].bool()) < REL


def test_scale_differs_between_t5_versions():
    assert logit_scale(tiny_seq2seq("t5")) == 32**-0.5
    assert logit_scale(tiny_seq2seq("t5_v1_1")) == 1.0
    assert logit_scale(tiny_seq2seq("mt5")) == 1.0


def test_encoder_only_capture_stops_early():
    model = tiny_seq2seq("t5")
    ids, mask, dids, dmask = data = batch(True)
    calls = []
    handles = [b.register_forward_hook(lambda *a, name=f"{s}{i}": calls.append(name))
               for s, stack in (("enc", model.encoder), ("dec", model.decoder)) for i, b in enumerate(stack.block)]
    with Seq2SeqCapturer(model, ["enc.resid_pre.0", "enc.attn_pattern.0"]) as cap:
        early = cap.run(ids, mask)  # no decoder inputs needed
    assert calls == ["enc0"]
    for h in handles:
        h.remove()
    full = capture(model, ["enc.resid_pre.0", "enc.attn_pattern.0", "dec.final"], *data)
    assert torch.equal(early["enc.resid"], full["enc.resid"])
    assert torch.equal(early["enc.attn_pattern"], full["enc.attn_pattern"])
    with Seq2SeqCapturer(model, ["dec.final"]) as cap, pytest.raises(ValueError, match="decoder_input_ids"):
        cap.run(ids, mask)
    encoder_only = T.T5EncoderModel(model.config).eval()
    encoder_only.load_state_dict(model.state_dict(), strict=False)
    alone = capture(encoder_only, ["enc.resid_pre.0", "enc.attn_pattern.0"], ids, mask, None, None)
    assert torch.allclose(alone["enc.attn_pattern"], full["enc.attn_pattern"], atol=1e-6)
    with pytest.raises(SiteError):
        Seq2SeqCapturer(encoder_only, ["dec.final"])


def test_head_subset():
    model = tiny_seq2seq("umt5")
    data = batch(True)
    sites = ["enc.attn_pattern.1", "dec.cross_pattern.2", "dec.attn_bias.0"]
    every, some = capture(model, sites, *data), capture(model, sites, *data, heads=[3, 1])
    for name, value in some.items():
        assert value.shape[2] == 2 and torch.equal(value, every[name][:, :, [3, 1]]), name


def test_close_restores_the_model():
    model = tiny_seq2seq("t5")
    ids, mask, dids, dmask = batch(True)
    kwargs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dids, decoder_attention_mask=dmask)
    before = model(**kwargs).logits
    with Seq2SeqCapturer(model, ["enc.attn_pattern.1", "dec.cross_pattern.0", "dec.resid_post.2"]) as cap:
        assert model.config._attn_implementation == "embwalk_t5"
        cap.run(ids, mask, dids, dmask)
        marked = [m for m in model.modules() if hasattr(m, SINK_ATTR)]
        assert len(marked) == 2
    assert model.config._attn_implementation == model.encoder.config._attn_implementation == "sdpa"
    assert not any(hasattr(m, SINK_ATTR) for m in model.modules())
    assert torch.equal(model(**kwargs).logits, before)


def test_an_attention_outside_the_registry_fails_loudly():
    model = tiny_seq2seq("t5")
    cap = Seq2SeqCapturer(model, ["enc.attn_pattern.0"])
    model.set_attn_implementation("eager")  # as if T5Attention never called the registered function
    with pytest.raises(RuntimeError, match="embwalk_t5"):
        cap.run(*batch(False)[:2])
    cap.close()
