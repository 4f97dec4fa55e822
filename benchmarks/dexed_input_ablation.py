"""Dexed estimator inputs compared on the same cached corpus: IF-Mel vs log-mel, six notes vs one.

Each variant is the recipe's :class:`~deepafx.recipes.dexed_matching.model.DexedEstimator`
(the config's ``model:`` section with ``features`` and ``input_notes`` changed)
trained with the P-loss alone on the cached corpus for the same number of
steps, batch size, learning rate and seed (the same batches), then scored —
network alone — on every held-out factory voice of the **validation split**
(``--split valid``, the default; the estimated preset renders all six notes
and the log-spectral distortion (LSD, dB) against the target's six notes is
averaged). This benchmark chooses between inputs, decodings and labels, so it
scores on validation: the test split is kept for the README's final table,
evaluated once per reported config. ``--split test`` exists only to reproduce
the figures of runs made before this rule (their README rows say so). Also scored: nearest-preset
retrieval over the training factory voices and over the whole corpus (cached
log-mel, Euclidean). Means with 95 % percentile-bootstrap intervals, and the
paired per-sound difference of every variant against ``logmel6``.

Variants: ``logmel6`` (log-mel, six notes), ``ifmel6`` (IF-Mel, six notes;
Engel et al., GANSynth, ICLR 2019), ``logmel1`` and ``ifmel1`` (the single note
(60, 85) only, the input most sound-matching work uses). Output decoding, on
``logmel6``: ``cat100`` (``model.max_categories: 100``: every DX7 parameter a
softmax head decoded by argmax, the mode, instead of NumCat++'s sigmoid heads
for the 0..99 parameters) and ``proto`` (:class:`PrototypeHead`: a classifier
over the training voices plus a residual; scored as ``proto``, the argmax voice,
and ``proto+residual``), ``proto_nn`` (the same classifier trained on every corpus item, each labelled
with its nearest training voice by cached log-mel distance, i.e. retrieval's own choice, cross-entropy only:
a distilled retrieval), ``proto_soft`` (soft labels ``softmax(−d/τ)`` over the same distances), ``proto_lsd``
(labels nearest by the evaluation's six-note LSD, :meth:`Corpus.voice_lsd`) and ``latent`` (:class:`PresetVAE`: the network regresses
a preset VAE's latent point and outputs its decoding).

The corpus is built in ``<data dir>/corpus`` first when missing (the dataset's
``in_domain.npz`` must exist: ``deepafx data --config dexed_matching/medium``).

Usage:
    python benchmarks/dexed_input_ablation.py --config dexed_matching/medium \\
        [--data-dir data/dexed_matching/medium] [--steps 3000] [--batch-size 64] \\
        [--device cpu|cuda] [--variants logmel6,ifmel6,logmel1,ifmel1,cat100,proto,latent] [--corpus-workers 2]
        [--split valid|test]
Prints one line per variant and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {
    "logmel6": {"features": "logmel", "input_notes": None},
    "ifmel6": {"features": "ifmel", "input_notes": None},
    "logmel1": {"features": "logmel", "input_notes": [3]},
    "ifmel1": {"features": "ifmel", "input_notes": [3]},
    "cat100": {"features": "logmel", "input_notes": None, "max_categories": 100},
    "proto": {"features": "logmel", "input_notes": None},
    "proto_nn": {"features": "logmel", "input_notes": None},
    "proto_soft": {"features": "logmel", "input_notes": None},
    "proto_lsd": {"features": "logmel", "input_notes": None},
    "latent": {"features": "logmel", "input_notes": None},
}
for _v in VARIANTS.values():  # the recipe's own voice-classifier head is off: each variant builds its own output
    _v["voice_classifier"] = False


class PresetVAE(torch.nn.Module):
    """``latent`` variant: a small VAE over the corpus presets (MLP 145 → 256 → z, decoder z → 256 → 512 →
    NumCat++ heads), in the spirit of Le Vaillant et al.'s preset-generating VAE: the decoder maps a latent
    point to a preset on the learned preset manifold. The audio network then regresses the latent point and
    is trained through the frozen decoder with the P-loss, so its outputs are decoder outputs."""

    def __init__(self, layout, num_params: int, z: int = 32):
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Linear(num_params, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2 * z))
        self.dec = torch.nn.Sequential(torch.nn.Linear(z, 256), torch.nn.ReLU(), torch.nn.Linear(256, 512), torch.nn.ReLU())
        self.numeric = torch.nn.Linear(512, layout.num_numeric)
        self.discrete = torch.nn.ModuleList(torch.nn.Linear(512, n) for n in layout.discrete_counts)

    def decode(self, zs: torch.Tensor):
        from deepafx.encoders import EstimatorOutput

        h = self.dec(zs)
        return EstimatorOutput(numeric=torch.sigmoid(self.numeric(h)), discrete_logits=[d(h) for d in self.discrete])

    def forward(self, x: torch.Tensor):
        mu, logvar = self.enc(x).chunk(2, dim=1)
        zs = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        return self.decode(zs), kl


class PrototypeHead(torch.nn.Module):
    """``proto`` variant: the estimator's CNN body with a softmax over the V training voices (the prototypes)
    and a bounded residual on every parameter (±0.5). Trained on the corpus items derived from a voice
    (the voice itself and its perturbations) with the cross-entropy of the source voice plus the L1 of
    ``clip(prototype[source] + residual)`` against the true preset (continuous parameters, transpose excluded).
    Decoded as the argmax voice (``proto``: a learned retrieval) and that voice plus the residual on the
    continuous parameters (``proto+residual``)."""

    def __init__(self, estimator, prototypes: torch.Tensor):
        super().__init__()
        self.estimator = estimator
        self.register_buffer("prototypes", prototypes)
        width = estimator.net.fc[1].out_features
        self.cls = torch.nn.Linear(width, len(prototypes))
        self.residual = torch.nn.Linear(width, prototypes.shape[1])

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.estimator.net
        h = net.fc(net.body(self.estimator.select(feats)))
        return self.cls(h), 0.5 * torch.tanh(self.residual(h))


def corpus_batch(corpus, idx: np.ndarray, kinds: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached features ``(B, notes · k, n_mels, frames)`` and true presets ``(B, 145)`` of corpus rows ``idx``."""
    feats = torch.from_numpy(corpus.batch(idx, kinds).astype(np.float32)).to(device, non_blocking=True)
    return feats, torch.from_numpy(corpus.params[idx]).float().to(device)


def fit(params, batch_loss, pool: np.ndarray, rng: np.random.Generator, args) -> tuple[float, float]:
    """Adam (``args.lr``) on ``params`` for ``args.steps`` batches of ``args.batch_size`` rows drawn from ``pool``
    with ``rng``; ``batch_loss(idx)`` is a batch's loss; gradient norm clipped at 5. Every variant trains here.

    Returns:
        ``(seconds, mean loss of the last 100 steps)``.
    """
    params = list(params)
    opt = torch.optim.Adam(params, lr=args.lr)
    t0 = time.perf_counter()
    losses = []
    for _ in range(args.steps):
        loss = batch_loss(rng.choice(pool, args.batch_size))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        losses.append(float(loss.detach()))
    return time.perf_counter() - t0, float(np.mean(losses[-100:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="dexed_matching/medium")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--corpus-workers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--split", default="valid", choices=("valid", "test"),
                    help="held-out voices scored (default valid: choices are made on validation, never on test)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from deepafx.metrics import bootstrap_ci, lsd_db, paired_bootstrap_ci
    from deepafx.config import load_config
    from deepafx.recipes import default_data_dir, get_recipe
    from deepafx.recipes.dexed_matching.corpus import Corpus
    from deepafx.recipes.dexed_matching.data import _ensure_corpus
    from deepafx.recipes.dexed_matching.model import DexedEstimator, predict
    from deepafx.recipes.dexed_matching.search import CorpusIndex, RetrievalIndex, numeric_free_mask

    config = get_recipe("dexed_matching").bind(load_config(args.config))
    dcfg = config.data
    if args.corpus_workers:
        dcfg = dataclasses.replace(dcfg, num_workers=args.corpus_workers)
    ddir = Path(args.data_dir) if args.data_dir else default_data_dir(config)
    t0 = time.perf_counter()
    _ensure_corpus(dcfg, ddir, force=False, progress=True)
    corpus_s = time.perf_counter() - t0
    corpus = Corpus(ddir / "corpus")
    ind = np.load(ddir / "in_domain.npz")
    x_eval, x_train = ind[f"x_{args.split}"].astype(np.float64), ind["x_train"].astype(np.float64)
    renderer = dcfg.renderer()
    targets = renderer.render_batch(x_eval)
    pitch = np.full(len(x_eval), 60)
    sr = dcfg.sample_rate

    def score(xs: np.ndarray) -> np.ndarray:
        return np.array([lsd_db(y, t) for y, t in zip(renderer.render_batch(xs), targets)])

    rows: dict[str, np.ndarray] = {}
    info: dict[str, dict] = {}
    rindex = RetrievalIndex(x_train, renderer)
    rows["retrieval"] = score(np.stack([rindex.retrieve(t, 60) for t in targets]))
    rows["retrieval_corpus"] = score(CorpusIndex(corpus).retrieve(targets))
    device = torch.device(args.device)
    free = torch.from_numpy(numeric_free_mask()).to(device)
    for name in args.variants.split(","):
        if name == "latent":
            train_s, final, rows["latent"], vae_info = train_latent_head(config, corpus, dcfg, args, device, targets, score)
            info["latent"] = {"train_seconds": round(train_s, 1), "final_ploss": final, **vae_info}
            print(f"latent: LSD {rows['latent'].mean():.2f} dB, {train_s:.0f} s", flush=True)
            continue
        if name == "proto":
            train_s, final, rows["proto"], rows["proto+residual"] = train_prototype_head(
                config, corpus, dcfg, args, device, free, targets, score)
            info["proto"] = {"train_seconds": round(train_s, 1), "final_loss": final}
            print(f"proto: LSD {rows['proto'].mean():.2f} dB, +residual {rows['proto+residual'].mean():.2f} dB, "
                  f"{train_s:.0f} s", flush=True)
            continue
        if name in ("proto_nn", "proto_soft", "proto_lsd"):
            train_s, final, rows[name], _ = train_prototype_head(
                config, corpus, dcfg, args, device, free, targets, score,
                labels_from={"proto_nn": "nearest", "proto_soft": "soft", "proto_lsd": "lsd"}[name])
            info[name] = {"train_seconds": round(train_s, 1), "final_loss": final}
            print(f"{name}: LSD {rows[name].mean():.2f} dB, {train_s:.0f} s", flush=True)
            continue
        settings = {**dataclasses.asdict(config.model), **VARIANTS[name]}
        torch.manual_seed(args.seed)
        model = DexedEstimator(len(dcfg.notes), sr, **settings).to(device)
        kinds = ["logmel", "ifmel"] if settings["features"] == "ifmel" else ["logmel"]
        model.train()

        def ploss(idx, model=model, kinds=kinds):
            feats, x_true = corpus_batch(corpus, idx, kinds, device)
            return model.p_loss(model(feats), x_true)[0]

        train_s, final = fit(model.parameters(), ploss, corpus.valid_index, np.random.default_rng(args.seed), args)
        model = model.cpu().eval()
        rows[name] = score(predict(model, targets, pitch))
        info[name] = {"train_seconds": round(train_s, 1), "final_ploss": final}
        print(f"{name}: LSD {rows[name].mean():.2f} dB, P-loss {info[name]['final_ploss']:.3f}, {train_s:.0f} s", flush=True)

    summary = {}
    for name, v in rows.items():
        lo, hi = bootstrap_ci(v, seed=args.seed)
        summary[name] = {"lsd": float(v.mean()), "ci": [lo, hi], **info.get(name, {})}
        if name != "logmel6" and "logmel6" in rows:
            m, plo, phi = paired_bootstrap_ci(v, rows["logmel6"], seed=args.seed)
            summary[name]["minus_logmel6"] = {"mean": m, "ci": [plo, phi]}
        if name not in ("retrieval", "retrieval_corpus"):
            m, plo, phi = paired_bootstrap_ci(v, rows["retrieval"], seed=args.seed)
            summary[name]["minus_retrieval"] = {"mean": m, "ci": [plo, phi]}
    out = {"benchmark": "dexed_input_ablation", "split": args.split, "n_voices": int(len(x_eval)), "corpus_valid": int(len(corpus.valid_index)),
           "corpus_build_seconds": round(corpus_s, 1), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           "device": str(device), "architecture": config.model.architecture, "results": summary,
           "per_sound_lsd": {k: [round(float(x), 3) for x in v] for k, v in rows.items()}}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


def train_latent_head(config, corpus, dcfg, args, device, targets, score, vae_steps: int = 3000, beta: float = 0.01):
    """Train and score the ``latent`` variant (:class:`PresetVAE`): the VAE first (``vae_steps`` batches of 256
    corpus presets, P-loss + ``beta`` · KL), then the audio network regressing its latent point through the frozen
    decoder; returns ``(seconds, final P-loss, LSD per voice, VAE figures)``."""
    from deepafx.recipes.dexed_matching.model import DexedEstimator, predict

    settings = {**dataclasses.asdict(config.model), **VARIANTS["latent"]}
    if settings["architecture"] != "cnn2d":
        raise SystemExit("the latent variant needs model.architecture: cnn2d")
    torch.manual_seed(args.seed)
    est = DexedEstimator(len(dcfg.notes), dcfg.sample_rate, **settings).to(device)
    vae = PresetVAE(est.layout, corpus.params.shape[1]).to(device)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in range(vae_steps):
        x = torch.from_numpy(corpus.params[rng.choice(corpus.valid_index, 256)]).float().to(device)
        out, kl = vae(x)
        loss = est.p_loss(out, x)[0] + beta * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vae.eval()
    with torch.no_grad():  # reconstruction P-loss of the held-out-voice-free corpus through the posterior mean
        x = torch.from_numpy(corpus.params[rng.choice(corpus.valid_index, 1024)]).float().to(device)
        mu = vae.enc(x).chunk(2, dim=1)[0]
        recon = float(est.p_loss(vae.decode(mu), x)[0])
    for p in vae.parameters():
        p.requires_grad_(False)
    width = est.net.fc[1].out_features
    to_z = torch.nn.Linear(width, vae.dec[0].in_features).to(device)
    net = est.net

    def heads(feats):
        return vae.decode(to_z(net.fc(net.body(est.select(feats)))))

    def ploss(idx):
        feats, x_true = corpus_batch(corpus, idx, ["logmel"], device)
        return est.p_loss(heads(feats), x_true)[0]

    est.train()
    vae_s = time.perf_counter() - t0
    audio_s, final = fit([*net.body.parameters(), *net.fc.parameters(), *to_z.parameters()], ploss,
                         corpus.valid_index, rng, args)
    train_s = vae_s + audio_s
    est, vae, to_z = est.cpu().eval(), vae.cpu(), to_z.cpu()
    est.net.forward_features = lambda x: vae.decode(to_z(est.net.fc(est.net.body(x))))  # decoder outputs
    lsd = score(predict(est, targets, np.full(len(targets), 60)))
    return train_s, final, lsd, {"vae_steps": vae_steps, "beta": beta, "vae_reconstruction_ploss": recon}


def train_prototype_head(config, corpus, dcfg, args, device, free, targets, score, labels_from: str = "source"):
    """Train and score the ``proto`` variant (:class:`PrototypeHead`); returns
    ``(seconds, final loss, LSD of the argmax voice, LSD of voice + residual or None for the label variants)``.

    ``labels_from="nearest"`` (``proto_nn``): every valid corpus item is labelled with its nearest training voice
    (:meth:`Corpus.nearest_voices`) and only the cross-entropy (label smoothing 0.1) is trained: what
    ``model.voice_classifier`` adds to the recipe, alone."""
    from deepafx.recipes.dexed_matching.model import DexedEstimator
    from deepafx.recipes.dexed_matching.presets import set_transpose

    protos = np.flatnonzero(corpus.kind == 0)  # the training voices themselves
    soft = None
    if labels_from in ("nearest", "soft", "lsd"):
        t0 = time.perf_counter()
        usable = corpus.valid_index
        rows, labels, dist = corpus.nearest_voices(distances=True, metric="lsd" if labels_from == "lsd" else "logmel",
                                                   num_workers=dcfg.num_workers)
        assert np.array_equal(rows, protos)
        if labels_from == "soft":  # softmax(−d / τ), τ the median gap between the nearest and second-nearest voice
            dv = dist[usable]
            part = np.sort(dv, axis=1)[:, :2]
            tau = float(np.median(part[:, 1] - part[:, 0]))
            soft = np.zeros_like(dist)
            soft[usable] = torch.softmax(torch.from_numpy(-(dv - part[:, :1]) / tau), dim=1).numpy()
            print(f"proto_soft: tau {tau:.3f}, mean top-1 mass {soft[usable].max(1).mean():.2f}", flush=True)
        print(f"{labels_from} labels: nearest voices of {len(usable)} items in {time.perf_counter() - t0:.0f} s; "
              f"{len(np.unique(labels[usable]))} distinct voices; a perturbation's nearest voice is its source for "
              f"{np.mean((corpus.source[protos][labels] == corpus.source)[usable][corpus.kind[usable] == 1]):.2f}",
              flush=True)
    else:
        label_of = {int(s): i for i, s in enumerate(corpus.source[protos])}
        labels = np.array([label_of.get(int(s), -1) for s in corpus.source])
        usable = np.intersect1d(corpus.valid_index, np.flatnonzero(labels >= 0))
    settings = {**dataclasses.asdict(config.model), **VARIANTS["proto"]}
    torch.manual_seed(args.seed)
    est = DexedEstimator(len(dcfg.notes), dcfg.sample_rate, **settings)
    if settings["architecture"] != "cnn2d":
        raise SystemExit("the proto variant needs model.architecture: cnn2d")
    model = PrototypeHead(est, torch.from_numpy(corpus.params[protos]).float()).to(device)
    model.train()

    def loss(idx):
        feats, x_true = corpus_batch(corpus, idx, ["logmel"], device)
        y = torch.from_numpy(labels[idx]).long().to(device)
        logits, res = model(feats)
        if labels_from in ("nearest", "lsd"):
            return torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
        if labels_from == "soft":
            return torch.nn.functional.cross_entropy(logits, torch.from_numpy(soft[idx]).to(device))
        est_x = (model.prototypes[y] + res).clamp(0, 1)
        return torch.nn.functional.cross_entropy(logits, y) + (est_x - x_true).abs()[:, free].mean()

    train_s, final = fit(model.parameters(), loss, usable, np.random.default_rng(args.seed), args)
    model = model.cpu().eval()
    with torch.no_grad():
        logits, res = model(est.features(torch.from_numpy(np.asarray(targets, dtype=np.float32))))
    voice = model.prototypes[logits.argmax(1)].double().numpy()
    if labels_from != "source":  # the classifier alone: its residual head is untrained, nothing to score
        return train_s, final, score(set_transpose(voice, 0)), None
    fm = free.cpu().numpy()
    refined = voice.copy()
    refined[:, fm] = np.clip(voice[:, fm] + res.double().numpy()[:, fm], 0, 1)
    return (train_s, final, score(set_transpose(voice, 0)), score(set_transpose(refined, 0)))


if __name__ == "__main__":
    main()
