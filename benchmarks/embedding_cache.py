"""Cost of a training step of the frozen-encoder CRNN (model=crnn_ast) with and without the embedding cache.

At the quick-start size: 10-s clips at 16 kHz, batch 8/8/8 (conf/data/embedded.yaml), the quick-start CRNN and
front-end (crnn_small, mel_small), and a randomly initialised AST (``--ast small``: hidden 192, 4 layers, 3 heads,
the published models' patching over 10.24 s; ``--ast base``: the published models' size, 768/12/12). One
mean-teacher step (``SEDModule.training_step``: front-end, encoder embeddings, mixup, student and teacher, losses;
then backward, Adam step, EMA update) on one pre-made batch of random audio, timed:

* cached: the batch's embeddings are in the cache (every epoch after the first);
* uncached: ``model.encoder.cache=false``, the encoder runs at every step (the reference).

The two are run interleaved (cached, uncached, cached, ...) so a burst of load on a shared machine hits both.

    python benchmarks/embedding_cache.py [--ast small|base] [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import time

from _common import (
    apply_threads,
    base_parser,
    interleaved,
    machine_line,
    median,
    note,
    result,
)

BENCH = "embedding_cache"
AST_SIZES = {
    "small": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def build_module(ast: dict, device: str):
    import torch
    from omegaconf import OmegaConf

    from sed.run.config import Config
    from sed.training.module import SEDModule

    cfg = OmegaConf.structured(Config)
    for key, value in {
        "paths.run_dir": "unused", "data.root": "unused", "features.n_fft": 1024, "features.win_length": 1024,
        "features.hop_length": 512, "features.n_mels": 64,
        "model": {"_target_": "sed.models.pretrained_crnn.PretrainedCRNN", "filters": [8, 16, 32, 64],
                  "pooling": [[1, 4], [2, 4], [1, 2], [1, 2]], "dropout": 0.2, "rnn_hidden": 32,
                  "dropout_recurrent_out": 0.2, "embedding_dim": 64, "encoder": {"config": ast}},
    }.items():
        OmegaConf.update(cfg, key, value, merge=False)
    torch.manual_seed(0)
    module = SEDModule(OmegaConf.to_container(cfg, resolve=True), [f"c{i}" for i in range(10)]).to(device).train()
    return module


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--ast", choices=sorted(AST_SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    apply_threads(args.threads)
    import torch

    from sed.training.ema import update_teacher

    print(machine_line(args.device))
    module = build_module(AST_SIZES[args.ast], args.device)
    enc = module.student.audio_encoder
    opt = torch.optim.Adam(module.student.parameters(), lr=1e-3)
    module.optimizers = lambda: opt  # training_step logs the learning rate
    module.log = lambda *a, **k: None
    gen = torch.Generator().manual_seed(0)
    n = 24
    batch = {
        "audio": (0.1 * torch.randn(n, 160000, generator=gen)).to(args.device),
        "strong": torch.zeros(n, 10, module.encoder.n_frames, device=args.device),
        "weak": torch.zeros(n, 10, device=args.device),
        "has_strong": (torch.arange(n) < 8).to(args.device), "has_weak": ((torch.arange(n) >= 8) & (torch.arange(n) < 16)).to(args.device),
        "filename": [f"{i}.wav" for i in range(n)],
    }

    def step(cache: bool) -> None:
        enc.use_cache = cache
        opt.zero_grad()
        loss = module.training_step(dict(batch), 0)
        loss.backward()
        opt.step()
        update_teacher(module.teacher, module.student, 0.999)

    t0 = time.perf_counter()
    step(True)  # fills the cache
    note(f"first step (fills the cache with {enc.cache_size} clips): {time.perf_counter() - t0:.2f}s")
    times = interleaved({"cached": lambda: step(True), "uncached": lambda: step(False)}, args.repeats,
                        warmup=0, device=args.device)
    cached, uncached = median(times["cached"]), median(times["uncached"])
    params = sum(p.numel() for p in enc.parameters())
    result(BENCH, f"AST-{args.ast} ({params / 1e6:.1f}M params, frozen), crnn_small, batch 8/8/8 of 10-s clips, "
                  f"{args.device}: step {cached * 1e3:.0f} ms with the cache vs {uncached * 1e3:.0f} ms encoding "
                  f"every step (reference): {uncached / cached:.1f}x faster with the cache "
                  f"(median of {args.repeats})")


if __name__ == "__main__":
    main()
