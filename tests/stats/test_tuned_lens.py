"""The tuned lens, trained from a store of a tiny random Llama with a 40-word vocabulary.

The model is saved as safetensors and named by its directory, so the job loads it as a user's
would; a small vocabulary keeps training fast (the [tokens, vocab] logits are the cost). The
reference evaluation reads the store, the model and the translators with zarr, pyarrow and
numpy only, in float64.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import transformers as T
import zarr

from embwalk.corpus import CorpusConfig
from embwalk.errors import EmbwalkError
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig, ExtractConfig
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model
from embwalk.stats.tuned_lens import TunedLensOptions, load_tuned_lens, run_tuned_lens
from embwalk.store.config import StoreConfig

WORDS = ("the cat dog sat on a mat while it slept by door walks through layer residual stream vector space "
         "token model every step moves far near small large red blue green old new").split()
HOLDOUT = 0.25


def word_model(root: Path, arch: str = "llama") -> Path:
    """A tiny random model and a word-level tokenizer, saved where ``model.name=DIR`` finds them;
    the unembedding is scaled up so next-token distributions are peaked (well-conditioned KL)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "<eos>", "[CLS]", "[SEP]", "[PAD]", ".", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="<eos>",
                                          cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")
    torch.manual_seed(0)
    size = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
            "max_position_embeddings": 64, "vocab_size": len(vocab)}
    if arch == "llama":
        model = T.LlamaForCausalLM(T.LlamaConfig(num_key_value_heads=2, **size))
        with torch.no_grad():
            model.lm_head.weight.mul_(40.0)
    else:
        model = T.BertModel(T.BertConfig(**size))
    out = root / f"model-{arch}"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def word_store(root: Path, model: Path, n_lines: int = 300, sites: list[str] | None = None,
               mode: str = "document") -> Path:
    """Lines of 4..20 words, 160-row shards: in document mode sequences run across shard bounds,
    in pack mode documents end inside sequences."""
    g = random.Random(0)
    lines = [" ".join(g.choice(WORDS) for _ in range(g.randint(4, 20))) + " ." for _ in range(n_lines)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    cfg = ExtractConfig(
        model=ModelConfig(name=str(model), device="cpu"),
        corpus=CorpusConfig(path=str(root / "corpus.txt"), txt_unit="line", mode=mode, seq_len=24),
        capture=CaptureConfig(sites=sites or ["resid_pre.0", "resid_post", "final"]),
        store=StoreConfig(path=str(root / "store"), shard_tokens=160, chunk_tokens=32),
        cluster=ClusterConfig(batch_size=16, progress=False),
    )
    extract_local(cfg)
    return root / "store"


def run_main(*argv: str) -> tuple[int, str, str]:
    """``embwalk tuned_lens ARGV`` in this process: (exit status, stdout, stderr)."""
    from embwalk.jobs.tuned_lens import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main(list(argv))
    return int(info.value.code or 0), out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return word_model(tmp_path_factory.mktemp("tl-model"))


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_dir) -> Path:
    return word_store(tmp_path_factory.mktemp("tl-store"), model_dir)


@pytest.fixture(scope="module")
def trained(store) -> dict:
    """The job, end to end, as a user runs it."""
    code, out, err = run_main(f"store={store}", "tuned_lens.steps=120", "tuned_lens.lr=0.01",
                              "tuned_lens.batch_tokens=256", f"tuned_lens.holdout={HOLDOUT}", "tuned_lens.device=cpu")
    assert code == 0, err
    return {"store": store, "stdout": out, "weights": store / "stats" / "tuned_lens.safetensors",
            "table": pq.read_table(store / "stats" / "tuned_lens.parquet").to_pydict()}


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(ModelConfig(name=str(model_dir), device="cpu"))


# ---- independent references ----------------------------------------------------------


def splitmix64_held_out(seq_id: int, holdout: float) -> bool:
    m = (1 << 64) - 1
    z = (seq_id + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return ((z ^ (z >> 31)) >> 11) / 2**53 < holdout


def safetensors_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file, parsed by hand (8-byte header size, JSON, raw data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    assert all(v["dtype"] == "F32" for v in header.values())
    data = raw[8 + n:]
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], "<f4").reshape(v["shape"])
            for k, v in header.items()}, meta


def reference_scores(store: Path, model: Path, weights: Path, holdout: float) -> dict[str, np.ndarray]:
    """Held-out KL(p_final || lens), next-token log-prob and top-1 per layer, in float64 numpy."""
    manifest = json.loads((store / "manifest.json").read_text())
    tokens = pq.read_table(sorted((store / "tokens").glob("*.parquet"))).to_pydict()
    rows, seq, doc, tok = (np.array(tokens[c]) for c in ("row", "seq_id", "doc_id", "token_id"))
    order = np.argsort(rows)
    rows, seq, doc, tok = rows[order], seq[order], doc[order], tok[order]
    assert (np.diff(rows) == 1).all()
    same = np.r_[(seq[1:] == seq[:-1]) & (doc[1:] == doc[:-1]), False]
    nxt = np.where(same, np.r_[tok[1:], -1], -1)
    out = np.array([splitmix64_held_out(int(s), holdout) for s in seq])
    layers = manifest["arrays"]["resid"]["layers"]
    resid = zarr.open_array(store / "activations.zarr" / "resid", mode="r")[:].astype(np.float64)[rows[out]]
    nxt = nxt[out]
    params, _ = safetensors_file(next(model.glob("*.safetensors")))
    w, g = params["lm_head.weight"].astype(np.float64), params["model.norm.weight"].astype(np.float64)
    eps = json.loads((model / "config.json").read_text())["rms_norm_eps"]
    translators, meta = safetensors_file(weights)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    def lens(h):
        return log_softmax((h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * g) @ w.T)

    if "final" in manifest["arrays"]:
        final = zarr.open_array(store / "activations.zarr" / "final", mode="r")[:].astype(np.float64)[rows[out]]
        logp = log_softmax(final @ w.T)
    else:
        logp = lens(resid[:, layers.index(manifest["model"]["n_layers"])])
    has = nxt >= 0
    res: dict[str, list] = {}
    for layer in json.loads(meta["layers"]) + [manifest["model"]["n_layers"]]:
        h = resid[:, layers.index(layer)]
        key = f"layer.{layer}.weight"
        tuned = h + h @ translators[key].T + translators[f"layer.{layer}.bias"] if key in translators else h
        for name, x in (("logit_lens", h), ("tuned_lens", tuned)):
            logq = lens(x)
            res.setdefault(f"kl_{name}", []).append((np.exp(logp) * (logp - logq)).sum(-1).mean())
            res.setdefault(f"logprob_{name}", []).append(logq[has, nxt[has]].mean())
            res.setdefault(f"top1_{name}", []).append((logq[has].argmax(-1) == nxt[has]).mean())
    return {"n_tokens": int(out.sum()), "n_next": int(has.sum()), **{k: np.array(v) for k, v in res.items()}}


# ---- the tests -------------------------------------------------------------------------


def test_the_job_writes_both_files_and_a_summary(trained):
    out, store = trained["stdout"], trained["store"]
    assert f"tuned lens: {trained['weights']}" in out and "KL tuned lens" in out and "(no translator)" in out
    assert sorted(p.name for p in (store / "stats").iterdir()) == ["tuned_lens.parquet", "tuned_lens.safetensors"]
    table = trained["table"]
    assert table["layer"] == [0, 1, 2, 3] and table["trained"] == [True, True, True, False]


def test_the_tuned_lens_beats_the_logit_lens_on_held_out_tokens(trained):
    """Every translated layer's held-out KL falls well below the logit lens's (untrained or
    unapplied translators would leave them equal); the last layer is the model's own output."""
    t = trained["table"]
    kl_logit, kl_tuned = np.array(t["kl_logit_lens"]), np.array(t["kl_tuned_lens"])
    assert (kl_logit[:3] > 0.1).all() and (kl_tuned[:3] < 0.75 * kl_logit[:3]).all(), (kl_logit, kl_tuned)
    assert kl_tuned[3] == kl_logit[3] < 1e-4  # final vs final_norm(resid) rounded to float16
    assert np.mean(t["logprob_tuned_lens"][:3]) > np.mean(t["logprob_logit_lens"][:3])


def test_held_out_scores_match_float64_numpy(trained, model_dir):
    ref = reference_scores(trained["store"], model_dir, trained["weights"], HOLDOUT)
    t = trained["table"]
    assert set(t["n_tokens"]) == {ref["n_tokens"]} and set(t["n_next"]) == {ref["n_next"]}
    for key in ("kl_logit_lens", "kl_tuned_lens", "logprob_logit_lens", "logprob_tuned_lens"):
        np.testing.assert_allclose(t[key], ref[key], rtol=2e-5, atol=1e-6, err_msg=key)
    for key in ("top1_logit_lens", "top1_tuned_lens"):  # a float32 near-tie may flip one token
        np.testing.assert_allclose(t[key], ref[key], atol=1.01 / ref["n_next"], err_msg=key)


def test_held_out_rows_never_reach_training(trained, loaded, tmp_path):
    """The split recorded is the hash rule's; altering every held-out row's values changes the
    evaluation but not one bit of the weights."""
    store = trained["store"]
    _, meta = safetensors_file(trained["weights"])
    split = json.loads(meta["split"])
    tokens = pq.read_table(sorted((store / "tokens").glob("*.parquet"))).to_pydict()
    seq = np.array(tokens["seq_id"])
    out = np.array([splitmix64_held_out(int(s), HOLDOUT) for s in seq])
    assert split["heldout_tokens"] == out.sum() and split["train_tokens"] == (~out).sum()
    assert split["heldout_sequences"] == len(set(seq[out])) and split["holdout"] == HOLDOUT
    assert 0.1 < split["heldout_sequences"] / len(set(seq)) < 0.4
    original, altered = tmp_path / "original", tmp_path / "altered"
    for copy in (original, altered):
        shutil.copytree(store, copy, ignore=shutil.ignore_patterns("stats"))
    held_rows = np.array(tokens["row"])[out]
    for name in ("resid", "final"):
        arr = zarr.open_array(altered / "activations.zarr" / name, mode="r+")
        values = arr[:]
        values[held_rows] = -values[held_rows]
        arr[:] = values
    options = TunedLensOptions(steps=6, lr=0.01, batch_tokens=256, holdout=HOLDOUT, device="cpu")
    first, second = (run_tuned_lens(s, options, loaded=loaded) for s in (original, altered))
    a, b = load_tuned_lens(first["weights"]), load_tuned_lens(second["weights"])
    for layer in a.layers:
        assert torch.equal(a.weights[layer][0], b.weights[layer][0])
        assert torch.equal(a.weights[layer][1], b.weights[layer][1])
    assert not np.allclose(first["per_layer"]["kl_logit_lens"], second["per_layer"]["kl_logit_lens"])


def test_round_trip_and_reruns(trained, loaded, tmp_path):
    """The loader gives back the saved tensors and metadata; translate is h + A h + b; the same
    seed trains the same weights bit for bit, another seed other weights."""
    lens = load_tuned_lens(trained["weights"])
    raw, meta = safetensors_file(trained["weights"])
    assert lens.layers == [0, 1, 2] and json.loads(meta["layers"]) == [0, 1, 2]
    manifest = json.loads((trained["store"] / "manifest.json").read_text())
    assert lens.metadata["weights_fingerprint"] == manifest["model"]["weights_fingerprint"]
    assert lens.metadata["d_model"] == 32 and lens.metadata["options"]["holdout"] == HOLDOUT
    for layer in lens.layers:
        np.testing.assert_array_equal(lens.weights[layer][0].numpy(), raw[f"layer.{layer}.weight"])
    table_meta = json.loads(pq.read_schema(trained["store"] / "stats" / "tuned_lens.parquet").metadata[b"embwalk"])
    assert table_meta["run_id"] == lens.metadata["run_id"] and table_meta["split"] == lens.metadata["split"]
    with pytest.raises(EmbwalkError, match="cannot read tuned lens"):
        load_tuned_lens(trained["store"] / "manifest.json")
    h = torch.randn(5, 32)
    a, b = raw["layer.1.weight"], raw["layer.1.bias"]
    np.testing.assert_allclose(lens.translate(1, h).numpy(), h.numpy() + h.numpy() @ a.T + b, rtol=1e-5, atol=1e-5)
    copy = tmp_path / "copy"
    shutil.copytree(trained["store"], copy, ignore=shutil.ignore_patterns("stats"))
    options = TunedLensOptions(steps=5, lr=0.01, batch_tokens=200, holdout=HOLDOUT, device="cpu", layers=[1, 2])
    runs = [load_tuned_lens(run_tuned_lens(copy, o, loaded=loaded)["weights"]).weights
            for o in (options, options, TunedLensOptions(**{**options.__dict__, "seed": 1}))]
    assert all(torch.equal(runs[0][k][i], runs[1][k][i]) for k in (1, 2) for i in (0, 1))
    assert not torch.equal(runs[0][1][0], runs[2][1][0])


def test_without_final_the_target_is_the_last_blocks_resid(model_dir, loaded, tmp_path):
    """p_final = softmax(unembed(final_norm(resid.3))): the logit lens at the last layer is the target
    itself. Packed, so documents end inside sequences: their last token has no next token."""
    store = word_store(tmp_path, model_dir, n_lines=80, sites=["resid_pre.0", "resid_post"], mode="pack")
    summary = run_tuned_lens(store, TunedLensOptions(steps=3, batch_tokens=128, holdout=0.3, device="cpu"),
                             loaded=loaded)
    assert load_tuned_lens(summary["weights"]).metadata["target"] == "resid.3"
    t = summary["per_layer"]
    assert t["kl_logit_lens"][-1] == 0 and (t["kl_logit_lens"][:-1] > 0.1).all()
    ref = reference_scores(store, model_dir, Path(summary["weights"]), 0.3)
    assert t["n_next"][0] == ref["n_next"] < ref["n_tokens"] - 80 * 0.2  # about one per document
    for key in ("kl_logit_lens", "kl_tuned_lens", "logprob_tuned_lens"):
        np.testing.assert_allclose(t[key], ref[key], rtol=2e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("case, fragment", [
    ("holdout", "tuned_lens.holdout must be in (0, 1), got 1.5"),
    ("no-resid", "holds no resid"),
    ("encoder", "not a causal LM"),
    ("empty", "not an embwalk store"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, fragment, store, tmp_path):
    args = ["tuned_lens.steps=2", "tuned_lens.device=cpu"]
    if case == "holdout":
        target, args = tmp_path / "s", [*args, "tuned_lens.holdout=1.5"]
        shutil.copytree(store, target, ignore=shutil.ignore_patterns("stats"))
    elif case == "no-resid":
        target = word_store(tmp_path, word_model(tmp_path), n_lines=20, sites=["final"])
    elif case == "encoder":
        target = word_store(tmp_path, word_model(tmp_path, "bert"), n_lines=20)
    else:
        target = tmp_path
    code, out, err = run_main(f"store={target}", *args)
    assert code == 2 and err.strip().count("\n") == 0 and err.startswith("embwalk: error: "), err
    assert fragment in err, err
    assert not list(Path(target).glob("stats/tuned_lens*")) and not list(Path(target).glob("stats/.tuned_lens*"))


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_the_hand_formed_gradient_is_autograds_also_through_a_logit_soft_cap(softcap):
    """Training forms d KL / du by hand; with Gemma 2's final_logit_softcapping it goes through the tanh."""
    from embwalk.stats.head import ModelHead
    from embwalk.stats.tuned_lens import _Decoder

    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 8, generator=g)  # logits of a few units: the cap of 2 bends them
    decoder = _Decoder(ModelHead(3, 8, True, w, softcap=softcap), torch.device("cpu"), target_is_final=True)
    p = torch.randn(5, 40, generator=g).softmax(-1)
    u = torch.randn(5, 8, generator=g, requires_grad=True)
    z = u @ w.T
    z = z if softcap is None else softcap * torch.tanh(z / softcap)
    (p * (p.log() - z.log_softmax(-1))).sum().backward()
    logits = decoder.logits(u)
    kl, logq = decoder.kl(logits, p, p.log())
    assert torch.allclose(kl.sum(), (p * (p.log() - z.log_softmax(-1))).sum().detach(), atol=1e-5)
    assert torch.allclose(decoder.grad(logits, logq, p), u.grad, atol=1e-5)
