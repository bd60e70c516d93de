"""The tuned lens (Belrose et al. 2023, arXiv 2303.08112), trained from a stored run.

The logit lens decodes a residual h_l as if it were the last one, which reads early
layers badly: their basis drifts from the one the unembedding expects. The tuned
lens learns one affine translator per layer, T_l(h) = h + A_l h + b_l, with A_l and b_l
zero at the start (training starts *at* the logit lens), minimising

    KL(p_final || softmax(W final_norm(T_l(h_l)) + c))

where p_final is the model's own output (the store's ``final``, else final_norm of the
last block's resid). Layers are independent: each step runs one layer at a time, so
memory is one micro-batch of [tokens, vocab] logits whatever the number of layers.

Sequences are held out by a fixed hash of their ``seq_id`` (``held_out``), not by
position in the store: the split does not move when shards are added or the seed
changes, and training never reads a held-out row's values (the random stream that
orders training tokens depends only on training rows). The store is read shard by
shard; nothing held in memory grows with the corpus but token counts.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embwalk.errors import EmbwalkError, StoreError, first_line

if TYPE_CHECKING:  # torch and the store reader are imported where used: the options stay light
    import torch

    from embwalk.stats.head import ModelHead
    from embwalk.store.reader import Store

FORMAT = "embwalk.tuned_lens/1"
WEIGHTS, TABLE = "tuned_lens.safetensors", "tuned_lens.parquet"
CHUNK_TOKENS = 256  # micro-batch: bounds the [tokens, vocab] logits in memory whatever batch_tokens is
SPLIT_RULE = "a sequence is held out iff (splitmix64(seq_id) >> 11) / 2**53 < holdout"


@dataclass
class TunedLensOptions:
    """How the tuned lens is trained and evaluated (the ``tuned_lens`` section of conf/tuned_lens.yaml)."""

    steps: int = 250  # optimizer steps (Adam, learning rate decayed linearly to 0)
    lr: float = 1e-3  # Adam learning rate
    batch_tokens: int = 512  # training tokens per step (fewer if the training part is smaller)
    holdout: float = 0.2  # fraction of sequences held out for evaluation, by a hash of seq_id
    seed: int = 0  # order of the training tokens (the split does not depend on it)
    layers: list[int] | None = None  # residual layers to translate; None = every stored one but the last
    device: str = "auto"  # where to train: cpu | cuda | cuda:N | auto

    def validate(self) -> None:
        if not 0 < self.holdout < 1:
            raise EmbwalkError(f"tuned_lens.holdout must be in (0, 1), got {self.holdout}")
        for key in ("steps", "batch_tokens"):
            if getattr(self, key) < 1:
                raise EmbwalkError(f"tuned_lens.{key} must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise EmbwalkError(f"tuned_lens.lr must be > 0, got {self.lr}")


def held_out(seq_ids: np.ndarray, holdout: float) -> np.ndarray:
    """True for the sequences held out (SPLIT_RULE): a pure function of each id."""
    z = np.asarray(seq_ids).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) < holdout * 2.0**53


class TunedLens:
    """Translators ``{layer: (A [d, d], b [d])}`` and the metadata they were trained with."""

    def __init__(self, weights: dict[int, tuple[torch.Tensor, torch.Tensor]], metadata: dict):
        self.weights = dict(sorted(weights.items()))
        self.metadata = metadata

    @property
    def layers(self) -> list[int]:
        return list(self.weights)

    def to(self, device: torch.device | str) -> TunedLens:
        """The same lens with its translators on ``device``."""
        return TunedLens({k: (a.to(device), b.to(device)) for k, (a, b) in self.weights.items()}, self.metadata)

    def translate(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """T_l(h) = h + h A_l^T + b_l for residuals ``h`` [..., d] of residual layer ``layer``;
        decode the result as the logit lens does (final norm, unembedding)."""
        if layer not in self.weights:
            raise EmbwalkError(f"the tuned lens has no translator for layer {layer}; it has {self.layers}")
        a, b = self.weights[layer]
        return h + h @ a.to(h).T + b.to(h)

    def save(self, path: str | Path) -> Path:
        """Write safetensors atomically (a killed run leaves no file a reader could take for data)."""
        from safetensors.torch import save_file

        from embwalk.store.durable import atomic_write

        tensors = {}
        for layer, (a, b) in self.weights.items():
            tensors[f"layer.{layer}.weight"] = a.detach().float().cpu().contiguous()
            tensors[f"layer.{layer}.bias"] = b.detach().float().cpu().contiguous()
        meta = {k: json.dumps(v) for k, v in self.metadata.items()}
        path = Path(path)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        return path


def load_tuned_lens(path: str | Path) -> TunedLens:
    """A tuned lens saved by ``TunedLens.save`` (safetensors: no pickle, nothing executed)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            if meta.get("format") != FORMAT:
                raise EmbwalkError(f"not an embwalk tuned lens ({FORMAT}): {path}")
            weights = {int(layer): (f.get_tensor(f"layer.{layer}.weight"), f.get_tensor(f"layer.{layer}.bias"))
                       for layer in meta["layers"]}
    except (OSError, ValueError, SafetensorError) as exc:  # missing, not safetensors, bad metadata
        raise EmbwalkError(f"cannot read tuned lens {path}: {first_line(exc)}") from exc
    return TunedLens(weights, meta)


# ---- reading the store ------------------------------------------------------------------


class _Rows:
    """What training and evaluation read, one shard at a time: token counts, the values of the
    chosen resid layers and of the target (``final``, or the last block's resid)."""

    def __init__(self, store: Store, options: TunedLensOptions):
        m = store.manifest
        resid = m["arrays"].get("resid")
        if resid is None:
            raise StoreError(f"store {store.location} holds no resid: the tuned lens reads residual streams")
        stored, n_layers = [int(x) for x in resid["layers"]], int(m["model"]["n_layers"])
        default = [x for x in stored if x != n_layers]
        self.layers = sorted(set(options.layers)) if options.layers is not None else default
        missing = [x for x in self.layers if x not in stored]
        if missing:
            raise EmbwalkError(f"tuned_lens.layers {missing} are not among the store's resid layers {stored}")
        if not self.layers:
            raise EmbwalkError(f"no residual layer to translate (the store's resid layers: {stored})")
        self.has_final = "final" in m["arrays"]
        if not self.has_final and stored[-1] != n_layers:
            raise StoreError(f"store {store.location} holds neither final nor the last block's resid "
                             f"(layer {n_layers}): the tuned lens has no target")
        self.target = "final" if self.has_final else f"resid.{n_layers}"
        self.eval_layers = sorted(set(self.layers) | ({n_layers} & set(stored)))
        self.store, self.holdout, self.stored = store, options.holdout, stored
        self.resid = store.array("resid")
        self.final = store.array("final") if self.has_final else None
        committed = set(store.committed)
        self.shards = {s["index"]: s["rows"] for s in m["shards"] if s["index"] in committed}
        self.counts = {"train_tokens": 0, "heldout_tokens": 0, "train_sequences": 0, "heldout_sequences": 0}
        self._first: dict[int, tuple[int, int, int]] = {}  # each shard's first (seq_id, doc_id, token_id)
        last = None  # the previous shard's last seq_id: a sequence running on is counted once
        for i in sorted(self.shards):
            seq, doc, tok = self._tokens(i)
            if not len(seq):
                continue
            out = held_out(seq, self.holdout)
            self._first[i] = (int(seq[0]), int(doc[0]), int(tok[0]))
            for side, mask in (("heldout", out), ("train", ~out)):
                ids = np.unique(seq[mask])
                self.counts[f"{side}_tokens"] += int(mask.sum())
                self.counts[f"{side}_sequences"] += len(ids) - int(last is not None and last in ids[:1])
            last = int(seq[-1])
        for key in ("train_tokens", "heldout_tokens"):
            if not self.counts[key]:
                side = "training" if key == "train_tokens" else "held-out"
                raise EmbwalkError(f"no {side} tokens with "
                                   f"tuned_lens.holdout={self.holdout} over {len(self.shards)} committed shard(s): "
                                   "the store is too small for this split")

    def _tokens(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self.store.read_tokens(index, ["seq_id", "doc_id", "token_id"])
        return tuple(t.column(c).to_numpy() for c in range(3))

    def read(self, index: int, heldout: bool) -> dict[str, np.ndarray]:
        """Rows of one side of the split in shard ``index``: ``x`` [n, layers, d] (stored dtype),
        ``target`` [n, d], and for the held-out side ``next`` [n]: the next token of the same
        sequence and document, -1 where there is none (as the logit lens's statistics count it)."""
        start, stop = self.shards[index]
        seq, doc, tok = self._tokens(index)
        keep = held_out(seq, self.holdout) == heldout
        out: dict[str, np.ndarray] = {}
        if not keep.any():
            return out
        rows = np.flatnonzero(keep)
        idx = [self.stored.index(x) for x in (self.eval_layers if heldout else self.layers)]
        # a plain slice, then numpy: zarr's orthogonal selection over layers is ~100x slower here
        block = self.resid[start:stop, idx[0]:idx[-1] + 1]
        out["x"] = block[np.ix_(rows, [i - idx[0] for i in idx])]
        if self.final is not None:
            out["target"] = self.final[start:stop][rows]
        else:
            out["target"] = self.resid[start:stop, len(self.stored) - 1][rows]
        if heldout:
            nxt = np.full(len(seq), -1, np.int64)
            same = (seq[1:] == seq[:-1]) & (doc[1:] == doc[:-1])
            nxt[:-1][same] = tok[1:][same]
            follow = self._first.get(index + 1)
            if follow and self.shards[index + 1][0] == stop and follow[:2] == (seq[-1], doc[-1]):
                nxt[-1] = follow[2]  # the sequence runs on into the next shard
            out["next"] = nxt[rows]
        return out


# ---- the model's head, and the KL's gradient without autograd over the vocabulary --------


class _Decoder:
    """The final norm (differentiable: the stats' ``Float32Norm`` runs without gradients) and
    the unembedding, float32 on the training device.

    The [tokens, vocab] logits dominate time and memory, so the KL's gradient in the logits
    is formed by hand: d KL(p || softmax z) / dz = softmax z - p, in place (times the soft
    cap's derivative 1 - (z / cap)^2 where the model caps its logits); only the translator
    and the norm go through autograd (no graph over the vocabulary).
    """

    def __init__(self, head: ModelHead, device: torch.device, target_is_final: bool):
        import torch

        from embwalk.stats.head import Float32Norm

        if head.unembed is None:
            raise EmbwalkError("the model has no unembedding (LM head): the tuned lens needs a causal LM")
        self.w = head.unembed.to(device=device, dtype=torch.float32)
        self.b = None if head.bias is None else head.bias.to(device=device, dtype=torch.float32)
        norm = head.final_norm
        if isinstance(norm, Float32Norm):
            module = copy.deepcopy(norm.module).to(device=device, dtype=torch.float32).requires_grad_(False)
            self.norm: Callable[[torch.Tensor], torch.Tensor] = module.forward
        else:
            self.norm = norm if norm is not None else (lambda x: x)
        self.softcap = head.softcap
        self.target_is_final = target_is_final
        self.device = device

    def logits(self, u: torch.Tensor) -> torch.Tensor:
        """Logits of normed residuals ``u`` [n, d] (no gradient), soft-capped as the model's."""
        from embwalk.stats.head import logits

        return logits(u.detach(), self.w, self.b, self.softcap)

    def grad(self, z: torch.Tensor, logq: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """d KL(p || softmax z) / du of the normed residuals u, from logits ``z`` = logits(u) and
        ``logq`` = log_softmax z (consumed: overwritten in place)."""
        g = logq.exp_().sub_(p)
        if self.softcap is not None:  # z = cap tanh(y / cap): dz/dy = 1 - tanh^2 = 1 - (z / cap)^2
            g.mul_(1 - (z / self.softcap).square_())
        return g @ self.w

    def target(self, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The target distribution p [n, V] and log p of stored rows (``final`` or the last resid)."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(target)).to(self.device, torch.float32)
        with torch.no_grad():
            logp = self.logits(t if self.target_is_final else self.norm(t)).log_softmax(-1)
            return logp.exp(), logp

    @staticmethod
    def kl(z: torch.Tensor, p: torch.Tensor, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(p || softmax z) per row (as sum p (log p - log q): no cancellation of large logits)
        and log q = log_softmax z."""
        logq = z.log_softmax(-1)
        return (p * (logp - logq)).sum(-1), logq


# ---- training and evaluation -----------------------------------------------------------


def _batches(rows: _Rows, rng: np.random.Generator, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Training batches forever: shards in a new random order each pass, tokens shuffled within
    a shard, carried over between shards, so a batch spans at most a few shards."""
    x = t = None
    while True:
        for index in rng.permutation(sorted(rows.shards)):
            got = rows.read(int(index), heldout=False)
            if not got:
                continue
            perm = rng.permutation(len(got["x"]))
            gx, gt = got["x"][perm], got["target"][perm]
            x, t = (gx, gt) if x is None else (np.concatenate([x, gx]), np.concatenate([t, gt]))
            while len(x) >= size:
                yield x[:size], t[:size]
                x, t = x[size:], t[size:]


def train(rows: _Rows, decoder: _Decoder, options: TunedLensOptions,
          say: Callable[[str], None] = lambda msg: None) -> tuple[dict, list[float]]:
    """Fit the translators of ``rows.layers`` on the training side; returns them and the loss
    per step (mean over layers of the batch's KL)."""
    import torch

    d, dev = int(rows.store.manifest["model"]["d_model"]), decoder.device
    a = [torch.zeros(d, d, device=dev, requires_grad=True) for _ in rows.layers]
    b = [torch.zeros(d, device=dev, requires_grad=True) for _ in rows.layers]
    opt = torch.optim.Adam([*a, *b], lr=options.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / options.steps)
    size = min(options.batch_tokens, rows.counts["train_tokens"])
    losses, batches = [], _batches(rows, np.random.default_rng(options.seed), size)
    for step in range(options.steps):
        x, t = next(batches)
        opt.zero_grad(set_to_none=False)
        total = 0.0
        for lo in range(0, size, CHUNK_TOKENS):
            xc = torch.from_numpy(np.ascontiguousarray(x[lo:lo + CHUNK_TOKENS])).to(dev, torch.float32)
            p, logp = decoder.target(t[lo:lo + CHUNK_TOKENS])
            for j in range(len(rows.layers)):
                h = xc[:, j]
                u = decoder.norm(h + h @ a[j].T + b[j])
                z = decoder.logits(u)
                kl, logq = decoder.kl(z, p, logp)
                total += float(kl.sum()) / size
                u.backward(decoder.grad(z, logq, p) / size)  # d KL / du, KL averaged over the batch
        opt.step()
        sched.step()
        losses.append(total / len(rows.layers))
        if step == 0 or (step + 1) % max(1, options.steps // 5) == 0:
            say(f"tuned lens: step {step + 1}/{options.steps}, mean KL {losses[-1]:.4f} nats")
    return {layer: (a[j].detach().cpu(), b[j].detach().cpu()) for j, layer in enumerate(rows.layers)}, losses


def evaluate(rows: _Rows, decoder: _Decoder, lens: TunedLens) -> dict[str, np.ndarray]:
    """Per evaluated layer, over held-out tokens: KL(p_final || lens) for the logit and the tuned
    lens, and the next token's mean log-probability and top-1 accuracy under each (tokens with a
    next token only). A layer without a translator is its own tuned lens (identity)."""
    import torch

    k = len(rows.eval_layers)
    sums = {f"{stat}_{name}": np.zeros(k) for stat in ("kl", "logprob", "top1")
            for name in ("logit_lens", "tuned_lens")}
    n_tokens, n_next = 0, 0
    with torch.no_grad():
        for index in sorted(rows.shards):
            got = rows.read(index, heldout=True)
            for lo in range(0, len(got.get("x", ())), CHUNK_TOKENS):
                xc = torch.from_numpy(got["x"][lo:lo + CHUNK_TOKENS]).to(decoder.device, torch.float32)
                p, logp = decoder.target(got["target"][lo:lo + CHUNK_TOKENS])
                nxt = torch.from_numpy(got["next"][lo:lo + CHUNK_TOKENS]).to(decoder.device)
                has = nxt >= 0
                n_tokens, n_next = n_tokens + len(xc), n_next + int(has.sum())
                for j, layer in enumerate(rows.eval_layers):
                    h = xc[:, j]
                    tuned = lens.translate(layer, h) if layer in lens.weights else h
                    for name, hh in (("logit_lens", h), ("tuned_lens", tuned)):
                        kl, logq = decoder.kl(decoder.logits(decoder.norm(hh)), p, logp)
                        sums[f"kl_{name}"][j] += float(kl.double().sum())
                        lp = logq.gather(-1, nxt.clamp_min(0)[:, None])[:, 0]
                        sums[f"logprob_{name}"][j] += float(lp[has].double().sum())
                        sums[f"top1_{name}"][j] += int((logq.argmax(-1) == nxt)[has].sum())
    out = {"layer": np.array(rows.eval_layers, np.int64),
           "trained": np.array([x in lens.weights for x in rows.eval_layers]),
           "n_tokens": np.full(k, n_tokens, np.int64), "n_next": np.full(k, n_next, np.int64)}
    for key, v in sums.items():
        out[key] = v / (n_tokens if key.startswith("kl") else max(n_next, 1))
    return out


def run_tuned_lens(path: str | Path, options: TunedLensOptions | None = None, loaded=None,
                   report: Callable[[str], None] | None = None) -> dict:
    """Train on a store's training sequences, evaluate on its held-out ones, write
    STORE/stats/tuned_lens.safetensors and tuned_lens.parquet; returns the summary.
    ``loaded`` replaces loading the store's model (its fingerprint is still checked)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embwalk.models.loading import resolve_device
    from embwalk.stats.from_store import check_store
    from embwalk.stats.job import model_head
    from embwalk.store import layout
    from embwalk.store.durable import atomic_write

    options = options or TunedLensOptions()
    options.validate()
    say = report or (lambda msg: None)
    store = check_store(path)
    m = store.manifest
    if not m.get("causal", True):
        raise EmbwalkError(f"model {m['model']['id']!r} is not a causal LM (no LM head): "
                           "the tuned lens needs its next-token distribution")
    rows = _Rows(store, options)
    device = resolve_device(options.device)
    decoder = _Decoder(model_head(store, loaded), device, rows.has_final)
    say(f"tuned lens: layers {rows.layers}, {rows.counts['train_tokens']} training tokens, "
        f"{rows.counts['heldout_tokens']} held out, on {device}")
    started = time.perf_counter()
    weights, losses = train(rows, decoder, options, say)
    seconds = time.perf_counter() - started
    meta = {
        "format": FORMAT, "model_id": m["model"]["id"], "weights_fingerprint": m["model"]["weights_fingerprint"],
        "model_family": m["model"].get("family"), "n_layers": m["model"]["n_layers"],
        "d_model": m["model"]["d_model"], "layers": rows.layers, "target": rows.target,
        "translator": "h + h @ weight.T + bias", "options": asdict(options),
        "split": {"rule": SPLIT_RULE, "holdout": options.holdout, **rows.counts},
        "store": str(store.location), "train_seconds": round(seconds, 3), "final_loss": losses[-1],
        "run_id": uuid.uuid4().hex,  # the same in both files: a reader can tell they belong together
    }
    lens = TunedLens(weights, meta)
    table = evaluate(rows, decoder, lens.to(device))
    out = Path(store.root) / layout.STATS_DIR
    out.mkdir(exist_ok=True)
    (out / TABLE).unlink(missing_ok=True)  # killed between the two writes: no table rather than a stale one
    lens.save(out / WEIGHTS)
    arrow = pa.table(table).replace_schema_metadata({"embwalk": json.dumps({k: meta[k] for k in (
        "format", "model_id", "weights_fingerprint", "layers", "target", "split", "run_id")})})
    atomic_write(out / TABLE, lambda tmp: pq.write_table(arrow, str(tmp)))
    return {"store": str(store.location), "weights": str(out / WEIGHTS), "table": str(out / TABLE),
            "train_seconds": seconds, "steps": options.steps, "device": str(device), **rows.counts,
            "per_layer": table, "losses": losses}
