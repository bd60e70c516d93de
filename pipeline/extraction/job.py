"""An extraction job: resolve its config, tokenize and plan it, and describe its store.

Everything here runs before any shard is computed and is deterministic, so
the local executor, a Ray driver and a rerun that resumes all derive the same
plan and the same store identity from the same config. The driver needs the
model's description (config, tokenizer, weights fingerprint: a ModelSpec, or a
loaded model in tests), never its weights; the corpus is tokenized part by part
into the store's staging area by whatever CPUs the executor has
(pipeline/corpus/staged.py), and nothing the driver holds grows with it.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass
from importlib import metadata

import torch

from embwalk.corpus import vocabulary_strings
from embwalk.corpus.pairs import decoder_start_id
from embwalk.corpus.sequences import ShardTokens
from embwalk.corpus.shuffle import TokenShuffle
from embwalk.corpus.staged import StagedCorpus, stage_corpus
from embwalk.errors import EmbwalkError, SiteError
from embwalk.extraction.config import ExtractConfig
from embwalk.extraction.runner import ShardRunner
from embwalk.extraction.teacher import TeacherForcedForward
from embwalk.generation.plan import GenerationPlan
from embwalk.models.capture import CaptureLayout
from embwalk.models.loading import LoadedModel
from embwalk.models.sites import parse_sites
from embwalk.plan import Plan, Shard, plan_staged, shard_tokens_for
from embwalk.stats.inpass import InPassStats, check_capture
from embwalk.store import layout as store_layout
from embwalk.store.fs import open_fs, require_local
from embwalk.store.writer import StoreWriter, check_store_location

STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class PreparedJob:
    """What the driver hands the executor: small whatever the corpus (its parts' offsets,
    not its tokens) and whatever the model (its description, not its weights)."""

    config: ExtractConfig
    corpus: StagedCorpus
    plan: Plan
    layout: CaptureLayout
    sites: list[str]
    specs: list[store_layout.ArraySpec]
    manifest: dict
    stats: object | None = None  # embwalk.stats.base.StatsConfig of in-pass statistics
    shuffle: TokenShuffle | None = None  # corpus.shuffle_tokens: the order each shard's tokens are fed in
    generation: GenerationPlan | None = None  # embwalk generate: the continuations the store holds

    @property
    def dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.config.store.dtype]

    def runner(self, loaded: LoadedModel, writer: StoreWriter, max_pending: int = 2) -> ShardRunner:
        """The shard runner of this job on a worker: ``loaded`` is the worker's model; the in-pass
        statistics, if any, observe its shards."""
        observers = []
        if self.stats is not None:
            columns = store_layout.GENERATION_COLUMNS.names if self.generation is not None else ()
            observers.append(InPassStats.for_model(self.stats, loaded, self.layout, writer.fs, columns))
        cfg = self.config
        forward = None
        if self.generation is not None:
            from embwalk.generation.forward import GenerationForward
            from embwalk.generation.seq2seq import Seq2SeqGenerationForward

            # a decoder store's prompts are encoder inputs: its decoder generates (pipeline/generation/seq2seq.py)
            kind = Seq2SeqGenerationForward if self.corpus.pairs else GenerationForward
            forward = kind(loaded, cfg.decode, self.generation)
        elif self.corpus.pairs:
            forward = TeacherForcedForward(loaded)
        return ShardRunner(
            loaded, self.layout, self.tokens_for, writer, vocabulary_strings(loaded.tokenizer),
            dtype=self.dtype, batch_size=cfg.cluster.batch_size, seq_len=self.manifest["seq_len"],
            max_pending=max_pending, store_arrays=cfg.capture.store_arrays, observers=observers, forward=forward,
        )

    def tokens_for(self, shard: Shard) -> ShardTokens:
        """A shard's corpus rows, read from the store's staging area (what a worker reads)."""
        fs = open_fs(self.config.store.path)
        if self.generation is not None:  # its prompts, and rows for what will be generated
            a, b = self.generation.corpus_rows(shard)
            rows = self.corpus.read_rows(fs, a, b)
            first = self.generation.prompts(shard)[0]
            prompts = ShardTokens.from_rows(rows, a, first, self.corpus.mode, self.corpus.seq_len)
            if self.corpus.pairs:  # a decoder store: the prompts' encoder inputs (one per prompt, ids in order)
                doc = int(prompts.doc_ids[0])
                prompts.inputs = self.corpus.read_inputs(fs, doc, doc + len(prompts.seq_offsets) - 1)
            return self.generation.window(prompts, shard)
        rows = self.corpus.read_rows(fs, *shard.seq_rows)
        win = ShardTokens.from_rows(rows, shard.seq_rows[0], shard.seqs[0], self.corpus.mode, self.corpus.seq_len)
        if self.corpus.pairs:  # a decoder store: its pairs' encoder inputs (one pair per sequence, ids in order)
            first = int(win.doc_ids[0])
            win.inputs = self.corpus.read_inputs(fs, first, first + shard.seqs[1] - shard.seqs[0])
        # the shuffled-input control: permuted here, on the worker, per shard; the window holds whole sequences
        return win if self.shuffle is None else self.shuffle.apply(win)


def prepare(cfg: ExtractConfig, model, parts_mapper=None) -> PreparedJob:
    """Validate, tokenize, plan and describe the store; no activations are computed.

    ``model`` describes the model (a ModelSpec; a LoadedModel works too): its
    tokenizer, sizes and weights fingerprint. ``parts_mapper`` runs the
    tokenization's parts (pipeline/executors/units.py; default: this process).
    """
    cfg.validate()  # every option value, before the store exists
    open_fs(cfg.store.path)  # an unknown protocol or a missing fsspec backend fails here, before any work
    if cfg.capture.stats is not None:  # partials go through StoreFS, but statistics on a URL store are untested
        require_local(cfg.store.path, "statistics computed in the pass (capture.stats)")
    new_tokens = cfg.decode.max_new_tokens if cfg.decode is not None else 0
    if model.max_positions and cfg.corpus.seq_len + new_tokens > model.max_positions:
        what = f"corpus.seq_len={cfg.corpus.seq_len}" + (f" + decode.max_new_tokens={new_tokens}" if new_tokens else "")
        raise EmbwalkError(f"{what} is above the model's limit of {model.max_positions} positions ({model.model_id})")
    if cfg.decode is not None and not model.family.causal:
        hint = ": capture dec.* sites, its decoder generates" if model.family.stack == "enc" else ""  # T5's encoder
        raise EmbwalkError(f"embwalk generate needs a causal language model; {model.model_id} is not one{hint}")
    sites, heads, layout = capture_layout(cfg, model)
    generating = cfg.decode is not None
    shard_tokens = shard_tokens_for(
        cfg.store.shard_tokens, cfg.store.chunk_tokens, cfg.corpus.seq_len, cfg.corpus.mode
    )
    fs = open_fs(cfg.store.path)
    check_store_location(fs)  # before the first staged file: never into a directory that is not a store
    existed = fs.exists()
    try:
        start = decoder_start_id(model.config) if cfg.model.stack == "dec" else None  # pairs, or inputs alone
        corpus, counts = stage_corpus(fs, cfg.corpus, model.tokenizer, parts_mapper, cfg.cluster.progress, start)
    except EmbwalkError:
        if not existed:  # bad input (an empty or binary file ...): leave no store behind
            fs.remove("")
        raise
    generation = None
    if cfg.decode is not None:
        generation, plan = GenerationPlan.for_corpus(corpus, cfg.decode, fs, cfg.store.shard_tokens,
                                                     cfg.store.chunk_tokens)
    else:
        plan = plan_staged(corpus, fs, shard_tokens)
    stats = None
    if cfg.capture.stats is not None:  # self-similarity types: the corpus's most frequent tokens, from counts
        ids, n = corpus.token_counts(fs, counts)
        stats = cfg.capture.stats.stats_config(counts=(ids, n), n_resid=len(layout.residual), generation=generating,
                                               position_bias=model.family.position_bias)
    specs = [] if not cfg.capture.store_arrays else store_layout.array_specs(
        n_tokens=plan.n_tokens,
        n_sequences=plan.n_sequences,
        seq_len=cfg.corpus.seq_len if generation is None else generation.max_seq_len,
        d_model=model.d_model,
        shard_tokens=plan.shard_tokens,
        chunk_tokens=cfg.store.chunk_tokens,
        per_token_layers=layout.array_layers(),
        widths={name: model.family.site_width(name, model.config, model.d_model) for name in layout.array_layers()},
        final=layout.final,
        pattern_layers=layout.pattern_layers,
        sequence_layers={store_layout.SEQUENCE_ARRAYS[k]: layers for k, layers in layout.per_sequence().items()
                         if k != "attn_pattern"},
        heads=tuple(heads) if heads is not None else tuple(range(model.n_heads or 0)),  # None: attention-free
        dtype=cfg.store.dtype,
    )
    shuffle = None
    if cfg.corpus.shuffle_tokens:  # the special tokens it holds in place come from the driver's tokenizer
        shuffle = TokenShuffle.for_tokenizer(cfg.corpus.shuffle_seed, model.tokenizer)
    manifest = _manifest(cfg, model, corpus, plan, [s.name for s in sites], shuffle, generation)
    return PreparedJob(cfg, corpus, plan, layout, [s.name for s in sites], specs, manifest, stats, shuffle,
                       generation)


def capture_layout(cfg: ExtractConfig, model) -> tuple[list, list[int] | None, CaptureLayout]:
    """The job's sites, heads and capture layout on ``model`` (a ModelSpec or LoadedModel); a one-line
    error for a site or head the model lacks, or in-pass statistics the capture cannot feed, before any work."""
    sites = parse_sites(list(cfg.capture.sites), model.n_layers, model.family.stack)
    heads = _heads(cfg.capture.heads, model.n_heads)
    layout = CaptureLayout.from_sites(sites, heads)
    model.family.check_kinds(layout.kinds(), model.config, layout.taps)
    # Statistics asked for and not computable from this capture: refused too. The default set's
    # families the capture cannot feed are skipped by each shard's WalkStats, with the reason.
    if cfg.capture.stats is not None:
        generating, bias = cfg.decode is not None, model.family.position_bias
        check_capture(cfg.capture.stats.families_for(generating, bias), layout, model.n_layers,
                      model.family.causal, cfg.capture.stats.exclude_massive,  # decoders: LM head
                      store_layout.GENERATION_COLUMNS.names if generating else (),
                      default=cfg.capture.stats.families is None, attention=model.family.attention,
                      position_bias=bias, stack=cfg.model.stack)
    return sites, heads, layout


def _heads(heads: list[int] | None, n_heads: int | None) -> list[int] | None:
    if heads is None:
        return None
    if n_heads is None:
        raise SiteError("capture.heads is given, but the model is attention-free: it has no attention heads")
    for h in heads:
        if not 0 <= int(h) < n_heads:
            raise SiteError(f"attention head {h} is out of range: the model has {n_heads} heads (0..{n_heads - 1})")
    return sorted({int(h) for h in heads})


def _manifest(cfg: ExtractConfig, spec, corpus: StagedCorpus, plan: Plan, sites: list[str],
              shuffle: TokenShuffle | None = None, generation: GenerationPlan | None = None) -> dict:
    tokenizer = spec.tokenizer
    model = spec.describe()
    identity = {
        # Everything that decides what the arrays hold; a resume must match it all.
        "model.weights_fingerprint": model["weights_fingerprint"],
        "model.dtype": model["dtype"],
        "tokenizer.vocab_size": len(tokenizer),
        "corpus": cfg.corpus.token_options(),  # the shuffle apart, below: unshuffled identities stay as they were
        "corpus.token_checksum": corpus.checksum,
        "corpus.n_tokens": plan.n_tokens,
        "capture.sites": sites,
        "capture.heads": cfg.capture.heads,
        "capture.store_arrays": cfg.capture.store_arrays,
        "capture.stats": None if cfg.capture.stats is None else asdict(cfg.capture.stats),
        "store.dtype": cfg.store.dtype,
        "store.shard_tokens": plan.shard_tokens,
        "store.chunk_tokens": cfg.store.chunk_tokens,
        "store.compressor": cfg.store.compressor,
    }
    extra = {}
    if cfg.model.stack == "dec":  # pairs or inputs alone: the decoder rows start with the model's start token
        identity["corpus.decoder_start_token_id"] = decoder_start_id(spec.config)
    if shuffle is not None:  # only when on: a store without it keeps the identity it always had
        identity.update(shuffle.identity())
        extra["shuffle"] = shuffle.describe()  # TokenShuffle.from_manifest reads it back
    if generation is not None:  # what was generated, and how: part of what the arrays hold
        identity["decode"] = asdict(cfg.decode)
        extra["generation"] = {**generation.describe(), "decode": asdict(cfg.decode),
                               "columns": store_layout.GENERATION_COLUMNS.names}
    return {
        "format": store_layout.FORMAT,
        "format_version": store_layout.FORMAT_VERSION,
        "model": model,
        "tokenizer": {
            "name_or_path": getattr(tokenizer, "name_or_path", None),
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
        },
        "config": {
            "model": asdict(cfg.model), "corpus": asdict(cfg.corpus),
            "capture": asdict(cfg.capture), "store": asdict(cfg.store),
        },
        "sites": sites,
        "dtype": cfg.store.dtype,
        "seq_len": cfg.corpus.seq_len if generation is None else generation.max_seq_len,
        "mode": cfg.corpus.mode,
        "causal": spec.family.causal,
        "n_tokens": plan.n_tokens,
        "n_sequences": plan.n_sequences,
        "n_documents": corpus.n_documents,
        "shard_tokens": plan.shard_tokens,
        "shards": [s.to_dict() for s in plan.shards],  # written as plan.parquet where not derivable
        "identity": identity,
        **extra,
        "versions": _versions(),
    }


def _versions() -> dict:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("embwalk", "torch", "transformers", "zarr", "pyarrow", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions
