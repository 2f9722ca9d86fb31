"""Front-end throughput: log-mel + scaler as a multiple of real time, against librosa on the CPU.

* ours: ``sed.features.frontend.FrontEnd`` (conf/features/mel.yaml: 16 kHz, n_fft 2048, hop 256, Hamming, 128 HTK
  mel bands up to 8 kHz, magnitude, dB clamped to [-50, 80]) followed by ``sed.features.scaler.TorchScaler``
  (conf/scaler/instance_minmax.yaml, the default), on a batch of 10 s clips, clip by clip, and the batch
  in chunks of 2 clips (the STFT of a whole batch builds a [B, frames, n_fft] tensor far larger than the
  CPU caches), with 1 torch thread and torch's default count; on the GPU too when one is present
  (``--device cuda`` or automatically).
* reference: ``librosa.feature.melspectrogram`` with the same parameters (symmetric Hamming window,
  reflect padding, power 1, htk, no norm) + ``librosa.amplitude_to_db`` (the power_to_db of magnitudes)
  + clamp + min-max scaling in numpy, clip by clip, on the CPU.
* agreement: largest absolute difference of the two log-mels in dB (a sanity check, not a speed figure).

    python benchmarks/frontend.py
    python benchmarks/frontend.py --batch-size 32 --repeats 9 --device cuda
"""

from __future__ import annotations

from _common import (
    apply_threads,
    base_parser,
    interleaved,
    machine_line,
    median,
    note,
    result,
    sync,
)

BENCH = "frontend"


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8, help="10 s clips per batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--thread-counts",
        type=int,
        nargs="*",
        default=[1],
        help="torch thread counts to measure besides the default one",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available, also), cpu or cuda")
    args = parser.parse_args()
    apply_threads(args.threads)

    import librosa
    import numpy as np
    import scipy.signal
    import torch

    from sed.features.frontend import FrontEnd
    from sed.features.scaler import TorchScaler

    print(machine_line("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"), flush=True)
    sr, seconds, b = 16000, 10.0, args.batch_size
    n = int(sr * seconds)
    gen = torch.Generator().manual_seed(0)
    # Noise with a decaying envelope: exercises the dB clamp at both ends like real audio.
    wav = torch.randn(b, n, generator=gen) * torch.linspace(1.0, 1e-4, n) ** 2
    frontend = FrontEnd()  # conf/features/mel.yaml defaults
    scaler = TorchScaler(statistic="instance", normtype="minmax", dims=(1, 2))
    window = scipy.signal.get_window("hamming", 2048, fftbins=False)  # symmetric, like periodic=False
    fe_kw = dict(
        sr=sr,
        n_fft=2048,
        hop_length=256,
        win_length=2048,
        window=window,
        center=True,
        pad_mode="reflect",
        power=1.0,
        n_mels=128,
        fmin=0.0,
        fmax=8000.0,
        htk=True,
        norm=None,
    )
    clips = [w.numpy() for w in wav]

    def ours_batch():
        with torch.no_grad():
            return scaler(frontend(wav))

    def ours_per_clip():
        with torch.no_grad():
            return [scaler(frontend(w[None])) for w in wav]

    def ours_chunks_of_2():  # the proposed CPU change: the same batch, front-end on 2 clips at a time
        with torch.no_grad():
            return scaler(torch.cat([frontend(c) for c in wav.split(2)]))

    def librosa_logmel(y):
        mel = librosa.feature.melspectrogram(y=y, **fe_kw)
        return np.clip(librosa.amplitude_to_db(mel, ref=1.0, amin=1e-5, top_db=None), -50.0, 80.0)

    def librosa_per_clip():
        out = []
        for y in clips:
            db = librosa_logmel(y)
            out.append((db - db.min()) / (db.max() - db.min() + 1e-8))
        return out

    with torch.no_grad():
        ours_db = frontend(wav[:1])[0].numpy()
    diff = float(np.abs(ours_db - librosa_logmel(clips[0])).max())
    audio_s = b * seconds
    default_threads = torch.get_num_threads()
    thread_counts = sorted({default_threads, *args.thread_counts})
    note(f"{b} clips of {seconds:.0f} s; max |ours - librosa| = {diff:.2e} dB; torch threads {thread_counts}")
    rt: dict[str, float] = {}
    for threads in thread_counts:  # librosa's numpy/BLAS threads are not changed; it runs in each round
        torch.set_num_threads(threads)
        times = interleaved(
            {
                "ours batch": ours_batch,
                "ours per clip": ours_per_clip,
                "ours chunks of 2": ours_chunks_of_2,
                "librosa per clip": librosa_per_clip,
            },
            repeats=args.repeats,
        )
        rt = {k: audio_s / median(v) for k, v in times.items()}
        result(
            BENCH,
            f"CPU ({threads} torch thread{'s' if threads > 1 else ''}) log-mel+scaler, batch of {b}: "
            f"{rt['ours batch']:,.0f}x real time (per clip {rt['ours per clip']:,.0f}x, 2 clips at a time "
            f"{rt['ours chunks of 2']:,.0f}x); reference librosa melspectrogram+amplitude_to_db: "
            f"{rt['librosa per clip']:,.0f}x real time; ratio {rt['ours batch'] / rt['librosa per clip']:.2f}x"
            f" (2 at a time {rt['ours chunks of 2'] / rt['librosa per clip']:.2f}x, "
            f"{rt['ours chunks of 2'] / rt['ours batch']:.2f}x the whole-batch call); "
            f"max abs diff {diff:.1e} dB [median of {args.repeats}]",
        )
    torch.set_num_threads(default_threads)

    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False")
        fe_gpu, sc_gpu, wav_gpu = frontend.to("cuda"), scaler.to("cuda"), wav.to("cuda")
        big = wav_gpu.repeat(8, 1)

        def gpu(x):
            def run():
                with torch.no_grad():
                    return sc_gpu(fe_gpu(x))

            return run

        gtimes = interleaved(
            {"gpu batch": gpu(wav_gpu), "gpu 8x batch": gpu(big)}, repeats=args.repeats, warmup=2, device="cuda"
        )
        grt = audio_s / median(gtimes["gpu batch"])
        grt8 = 8 * audio_s / median(gtimes["gpu 8x batch"])
        ref = rt["librosa per clip"]  # from the last (default-threads) CPU round
        result(
            BENCH,
            f"GPU ({torch.cuda.get_device_name(0)}) log-mel+scaler: batch of {b} {grt:,.0f}x real time, "
            f"batch of {8 * b} {grt8:,.0f}x; ratio to the librosa CPU reference {grt / ref:,.0f}x / "
            f"{grt8 / ref:,.0f}x",
        )
        sync("cuda")


if __name__ == "__main__":
    main()
