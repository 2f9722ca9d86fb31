"""Scoring: our validation/test scoring against 50-threshold re-thresholding, on the same scores.

Synthetic ground truth (10 classes, 10 s clips, 0-4 events each) and frame probabilities correlated with
it (noisy, time-smoothed logits around the true activity) at the label encoder's resolution (156 frames).

* ours: ``sed.evaluation.scoring.score_model`` (median filter, score tables, PSDS1, PSDS2, intersection F1, event and
  segment F1 at the configured threshold, weak F1), the function validation and test call once per model;
  with the per-part timings ``sed.evaluation.metrics.evaluate_full`` logs. Also ``sed.evaluation.metrics.psds`` alone
  (PSDS1+2), and what a validation scores: every metric, or only the objective's terms (between full validations,
  ``evaluation.full_metrics_every_n_epochs``).
* reference: the way DESED's baseline scores with psds_eval, written here from its description (no
  psds_eval dependency): decode the median-filtered probabilities into event tables with pandas at each of
  50 thresholds, count intersection-based TP/FP/cross-triggers per threshold with pandas joins, and build
  PSDS1 and PSDS2 from those 50 operating points (PSD-ROC area up to eFPR 100/h).
* check: the PSDS we report against ``sed_scores_eval.intersection_based.psds`` called directly on the same
  score tables (value and absolute difference), and the 50-threshold approximation next to the exact value.
* intersection F1 at 0.5 (what the default objective ``weak_f1+intersection_f1`` needs at every validation):
  ``sed.evaluation.metrics.intersection_f1`` against ``sed_scores_eval.intersection_based.fscore`` on the same
  score tables, time and values.

    python benchmarks/scoring.py
    python benchmarks/scoring.py --clips 5000 --thresholds 50 --repeats 3
"""

from __future__ import annotations

import logging
import re
import time
from types import SimpleNamespace

from _common import apply_threads, base_parser, machine_line, median, note, result

BENCH = "scoring"
PSDS1 = dict(dtc=0.7, gtc=0.7, cttc=None, alpha_ct=0.0, alpha_st=1.0, max_efpr=100.0)
PSDS2 = dict(dtc=0.1, gtc=0.1, cttc=0.3, alpha_ct=0.5, alpha_st=1.0, max_efpr=100.0)


# --------------------------------------------------------------------------- synthetic data
def synthetic(n_clips: int, classes: list[str], encoder, seed: int = 0):
    """Ground-truth DataFrame, durations, and ``{filename: [C, T]}`` probabilities correlated with it."""
    import numpy as np
    import pandas as pd
    from scipy.ndimage import uniform_filter1d

    rng = np.random.default_rng(seed)
    rows, probs, weak_probs, weak_targets = [], {}, {}, {}
    for i in range(n_clips):
        name = f"clip_{i:05d}.wav"
        events = []
        for _ in range(rng.integers(0, 5)):
            c = int(rng.integers(len(classes)))
            dur = float(rng.uniform(0.3, 5.0))
            on = float(rng.uniform(0.0, 10.0 - dur))
            events.append((round(on, 3), round(on + dur, 3), classes[c]))
        if events:
            rows += [(name, a, b, c) for a, b, c in events]
        else:
            rows.append((name, np.nan, np.nan, ""))
        target = encoder.encode_strong([e for e in events])
        noise = uniform_filter1d(rng.normal(0.0, 1.0, target.shape), size=9, axis=1) * 4.0
        logits = 4.0 * (target - 0.5) + noise + rng.normal(0.0, 0.5, (target.shape[0], 1))
        p = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        probs[name] = p
        weak_probs[name] = p.max(axis=1)
        weak_targets[name] = target.max(axis=1)
    gt = pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])
    from sed.data.tsv import merge_overlapping_events

    gt, _ = merge_overlapping_events(gt)
    durations = {f"clip_{i:05d}.wav": 10.0 for i in range(n_clips)}
    return gt, durations, probs, weak_probs, weak_targets


# --------------------------------------------------------------------------- the psds_eval-style reference
def decode_with_pandas(post: dict, threshold: float, classes: list[str], frame_s: float):
    """Binarise and decode one threshold clip by clip into a DataFrame (per-clip frames, then concat)."""
    import numpy as np
    import pandas as pd

    frames = []
    for name, p in post.items():
        active = p > threshold
        rows = []
        for c, cls in enumerate(classes):
            a = np.concatenate([[False], active[c], [False]]).astype(np.int8)
            change = np.diff(a)
            for start, stop in zip(np.flatnonzero(change == 1), np.flatnonzero(change == -1)):
                rows.append({"event_label": cls, "onset": start * frame_s, "offset": stop * frame_s})
        if rows:
            df = pd.DataFrame(rows)
            df["filename"] = name
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["event_label", "onset", "offset", "filename"])
    return pd.concat(frames, ignore_index=True)


def operating_point(det, gt, classes: list[str], total_hours: float, s: dict):
    """Intersection-based counts at one threshold (pandas joins): TPR per class, FP per hour of audio per
    class, cross-triggers of class c on class k per hour of class-k ground truth (the PSDS definitions)."""
    import numpy as np

    det = det.reset_index(drop=True).assign(det_id=lambda d: np.arange(len(d)))
    gt = gt.dropna(subset=["onset"]).reset_index(drop=True).assign(gt_id=lambda d: np.arange(len(d)))
    n_gt = gt.groupby("event_label").size().reindex(classes, fill_value=0).to_numpy()
    pairs = det.merge(gt, on="filename", suffixes=("_d", "_g"))
    inter = (np.minimum(pairs["offset_d"], pairs["offset_g"]) - np.maximum(pairs["onset_d"], pairs["onset_g"])).clip(
        lower=0
    )
    pairs = pairs.assign(inter=inter)[inter > 0]
    same = pairs[pairs["event_label_d"] == pairs["event_label_g"]]
    det_len = (det["offset"] - det["onset"]).to_numpy()
    dtc_ratio = np.zeros(len(det))
    sums = same.groupby("det_id")["inter"].sum()
    dtc_ratio[sums.index.to_numpy()] = sums.to_numpy() / det_len[sums.index.to_numpy()]
    accepted = dtc_ratio >= s["dtc"]
    fp_mask = ~accepted
    acc_pairs = same[accepted[same["det_id"].to_numpy()]]
    gt_len = (gt["offset"] - gt["onset"]).to_numpy()
    gtc_sum = acc_pairs.groupby("gt_id")["inter"].sum()
    tp_gt = np.zeros(len(gt), dtype=bool)
    tp_gt[gtc_sum.index.to_numpy()] = gtc_sum.to_numpy() / gt_len[gtc_sum.index.to_numpy()] >= s["gtc"]
    cls_idx = {c: i for i, c in enumerate(classes)}
    tp = np.bincount(gt["event_label"].map(cls_idx).to_numpy()[tp_gt], minlength=len(classes))
    det_cls = det["event_label"].map(cls_idx).to_numpy()
    ct = np.zeros((len(classes), len(classes)))
    if s["cttc"] is not None:
        other = pairs[(pairs["event_label_d"] != pairs["event_label_g"]) & fp_mask[pairs["det_id"].to_numpy()]]
        per = other.groupby(["det_id", "event_label_g"])["inter"].sum().reset_index()
        per = per[per["inter"].to_numpy() / det_len[per["det_id"].to_numpy()] >= s["cttc"]]
        np.add.at(ct, (det_cls[per["det_id"].to_numpy()], per["event_label_g"].map(cls_idx).to_numpy()), 1)
    fp = np.bincount(det_cls[fp_mask], minlength=len(classes))  # cross-triggers are false positives too
    gt_hours = (
        gt.assign(d=gt_len).groupby("event_label")["d"].sum().reindex(classes, fill_value=0.0).to_numpy() / 3600.0
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / n_gt
        ctr = ct / np.maximum(gt_hours, 1e-12)[None, :]  # per hour of the other class's ground truth
    return tpr, fp / total_hours, ctr


def psd_from_points(points, s: dict) -> float:
    """PSDS from per-threshold (TPR, FPR, CTR) points: effective FPR per class, step-wise ROC per class,
    mean - alpha_st * std over classes, normalised area up to max_efpr."""
    import numpy as np

    tpr = np.array([p[0] for p in points])  # [K, C]
    fpr = np.array([p[1] for p in points])
    ctr = np.array([p[2] for p in points])  # [K, C, C]
    n_c = tpr.shape[1]
    keep = ~np.isnan(tpr[0])
    off_diag = ~np.eye(n_c, dtype=bool)
    efpr = fpr + s["alpha_ct"] * (ctr * off_diag).sum(-1) / max(n_c - 1, 1)
    grid = np.unique(np.concatenate([[0.0], efpr[:, keep].ravel(), [s["max_efpr"]]]))
    grid = grid[grid <= s["max_efpr"]]
    curves = []
    for c in np.flatnonzero(keep):
        order = np.argsort(efpr[:, c], kind="stable")
        x, y = efpr[order, c], np.maximum.accumulate(tpr[order, c])
        idx = np.searchsorted(x, grid, side="right") - 1
        curves.append(np.where(idx >= 0, y[np.clip(idx, 0, None)], 0.0))
    curves = np.array(curves)
    etpr = curves.mean(0) - s["alpha_st"] * curves.std(0)
    etpr = np.clip(etpr, 0.0, None)
    area = np.sum(etpr[:-1] * np.diff(grid))
    return float(area / s["max_efpr"])


# --------------------------------------------------------------------------- main
class _Timings(logging.Handler):
    """Catches the per-part timings ``sed.evaluation.metrics.evaluate_full`` logs at INFO."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.parts: list[dict[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("evaluated "):
            inner = msg[msg.find("(") + 1 : msg.rfind(")")]
            self.parts.append({k: float(v) for k, v in re.findall(r"(\S+) ([0-9.]+)s", inner)})


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--thresholds", type=int, default=50, help="operating points of the reference")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of our scoring")
    parser.add_argument("--ref-repeats", type=int, default=1, help="repeats of the (slow) reference")
    args = parser.parse_args()
    apply_threads(args.threads)

    import numpy as np

    from sed.data.encoder import LabelEncoder
    from sed.evaluation.metrics import PSDS1 as OUR_PSDS1
    from sed.evaluation.metrics import PSDS2 as OUR_PSDS2
    from sed.evaluation.metrics import ground_truth_dict, psds
    from sed.evaluation.postprocess import audio_id, batch_to_scores, median_filter
    from sed.evaluation.scoring import score_model
    from sed.synth import DEFAULT_CLASSES

    print(machine_line(), flush=True)
    classes = list(DEFAULT_CLASSES)
    encoder = LabelEncoder(classes)
    gt, durations, probs, weak_probs, weak_targets = synthetic(args.clips, classes, encoder)
    n_events = int(gt["onset"].notna().sum())
    evaluation = SimpleNamespace(median_window=[7], thresholds=[0.5])
    note(
        f"{args.clips} clips x {len(classes)} classes x {encoder.n_frames} frames, {n_events} events; "
        f"ours: thresholds {evaluation.thresholds}, median {evaluation.median_window[0]}; "
        f"reference: {args.thresholds} thresholds"
    )

    timings = _Timings()
    mlog = logging.getLogger("sed.evaluation.metrics")
    mlog.addHandler(timings)
    mlog.setLevel(logging.INFO)
    logging.getLogger("sed").propagate = False  # keep warnings of the synthetic data quiet

    filenames = sorted(probs)
    post = median_filter(np.stack([probs[f] for f in filenames]), 7)
    post_d = dict(zip(filenames, post))
    scores_post = batch_to_scores(post, filenames, encoder.frame_timestamps(), classes, durations)
    total_hours = sum(durations.values()) / 3600.0
    thresholds = (np.arange(args.thresholds) + 0.5) / args.thresholds

    def ours_full():
        return score_model(probs, weak_probs, weak_targets, encoder, gt, durations, evaluation, per_class=True)

    def ours_psds():
        return psds(scores_post, gt, durations, OUR_PSDS1)[0], psds(scores_post, gt, durations, OUR_PSDS2)[0]

    def reference():
        p1, p2 = [], []
        for t in thresholds:
            det = decode_with_pandas(post_d, float(t), classes, encoder.frame_duration)
            p1.append(operating_point(det, gt, classes, total_hours, PSDS1))
            p2.append(operating_point(det, gt, classes, total_hours, PSDS2))
        return psd_from_points(p1, PSDS1), psd_from_points(p2, PSDS2)

    def ours_validation():
        # What a validation scores per model (evaluation.full_metrics_every_n_epochs epochs): PSDS1 (PSDS2 only
        # when the objective uses it), intersection/event/segment F1, weak F1.
        return score_model(probs, weak_probs, weak_targets, encoder, gt, durations, evaluation, psds=("psds1",))

    def ours_objective_only():
        # Between full validations: the default objective's terms (weak_f1+intersection_f1) only.
        return score_model(
            probs, weak_probs, weak_targets, encoder, gt, durations, evaluation, psds=(), f1=("intersection",)
        )

    from sed_scores_eval import intersection_based as sse_intersection

    from sed.evaluation.metrics import intersection_f1

    gt_ids = ground_truth_dict(gt)

    def ours_intersection():
        return intersection_f1(scores_post, gt, [0.5])[0.5]

    def sed_scores_eval_intersection():
        # what intersection_f1 called before: statistics at every distinct score, then read at 0.5
        return sse_intersection.fscore(scores_post, gt_ids, 0.5, dtc_threshold=0.5, gtc_threshold=0.5)

    jobs = (
        ("ours", ours_full),
        ("ours_psds", ours_psds),
        ("ours_validation", ours_validation),
        ("ours_objective", ours_objective_only),
        ("ours_intersection", ours_intersection),
        ("sse_intersection", sed_scores_eval_intersection),
        ("reference", reference),
    )
    times: dict[str, list[float]] = {name: [] for name, _ in jobs}
    out = {}
    for r in range(max(args.repeats, args.ref_repeats)):  # interleaved
        for name, fn in jobs:
            if r >= (args.ref_repeats if name == "reference" else args.repeats):
                continue
            n_logged = len(timings.parts)
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
            if name != "ours":
                del timings.parts[n_logged:]  # keep only score_model's part timings
    med = {k: median(v) for k, v in times.items()}
    metrics = out["ours"].metrics
    ref_p1, ref_p2 = out["reference"]

    # exact PSDS against sed_scores_eval called directly, on the same post-processed score tables
    from sed_scores_eval import intersection_based

    direct_scores = {audio_id(k): v for k, v in out["ours"].scores_postprocessed.items()}
    dur_direct = {audio_id(k): v for k, v in durations.items()}
    direct = {}
    for key, s in (("psds1", PSDS1), ("psds2", PSDS2)):
        direct[key] = intersection_based.psds(
            scores=direct_scores,
            ground_truth=gt_ids,
            audio_durations=dur_direct,
            dtc_threshold=s["dtc"],
            gtc_threshold=s["gtc"],
            cttc_threshold=s["cttc"],
            alpha_ct=s["alpha_ct"],
            alpha_st=s["alpha_st"],
            unit_of_time="hour",
            max_efpr=s["max_efpr"],
        )[0]

    parts = timings.parts[0] if timings.parts else {}
    if timings.parts:
        parts = {k: median(p.get(k, 0.0) for p in timings.parts) for k in timings.parts[0]}
    evaluate_s = sum(parts.values())
    result(
        BENCH,
        f"score_model on {args.clips} clips (PSDS1+2 exact, intersection/event/segment F1 @0.5, weak F1) "
        f"= {med['ours']:.2f} s; reference {args.thresholds}-threshold pandas decode + psds_eval-style "
        f"counting (PSDS1+2 only) = {med['reference']:.2f} s; ratio {med['reference'] / med['ours']:.2f}x "
        f"faster [median of {args.repeats} / {args.ref_repeats}]",
    )
    result(
        BENCH,
        f"PSDS1+PSDS2 alone: sed.evaluation.metrics.psds {med['ours_psds']:.2f} s vs reference "
        f"{med['reference']:.2f} s; ratio {med['reference'] / med['ours_psds']:.2f}x faster",
    )
    if parts:
        other = med["ours"] - evaluate_s
        result(
            BENCH,
            "score_model breakdown: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in parts.items())
            + f", median filter + score tables + weak F1 {other:.2f}s",
        )
    result(
        BENCH,
        f"validation scoring of one model: every metric (PSDS1, intersection/event/segment F1, weak F1) "
        f"{med['ours_validation']:.2f} s; the objective's terms only (weak F1 + intersection F1, "
        f"evaluation.full_metrics_every_n_epochs between full validations) {med['ours_objective']:.2f} s "
        f"= {med['ours_objective'] / med['ours_validation']:.0%} of it",
    )
    mine, (f_ref, _, _, _) = out["ours_intersection"], out["sse_intersection"]
    diff = max(
        abs(mine["f1_macro"] - f_ref["macro_average"]),
        abs(mine["f1_micro"] - f_ref["micro_average"]),
        *(abs(mine["per_class"][c] - f_ref[c]) for c in mine["per_class"]),
    )
    result(
        BENCH,
        f"intersection F1 @0.5 (dtc = gtc = 0.5): sed.evaluation.metrics.intersection_f1 "
        f"{med['ours_intersection']:.3f} s vs sed_scores_eval.intersection_based.fscore "
        f"{med['sse_intersection']:.3f} s; ratio {med['sse_intersection'] / med['ours_intersection']:.1f}x "
        f"faster; macro F1 {mine['f1_macro']:.6f} vs {f_ref['macro_average']:.6f}, largest |diff| over "
        f"macro, micro and per class {diff:.1e} ({'match' if diff < 1e-12 else 'MISMATCH'})",
    )
    for key in ("psds1", "psds2"):
        ours_v, direct_v = metrics[key], float(direct[key])
        approx = ref_p1 if key == "psds1" else ref_p2
        result(
            BENCH,
            f"{key.upper()}: ours {ours_v:.6f}, sed_scores_eval.intersection_based.psds direct "
            f"{direct_v:.6f}, |diff| {abs(ours_v - direct_v):.2e} "
            f"({'match' if abs(ours_v - direct_v) < 1e-9 else 'MISMATCH'}); "
            f"{args.thresholds}-threshold approximation {approx:.6f} (|diff| {abs(approx - ours_v):.4f})",
        )


if __name__ == "__main__":
    main()
