"""Cloak detection inside the evaluation: per attack, how well the detector tells the protected users'
cloaked training photos from natural ones.

Per seed: *natural* = the training photos of every identity that is not a protected user (what a
scraper holds besides the cloaked photos); *cloaked* = every protected user's cloaked training photos,
per attack, as the trainer receives them (on published photos: cut again from the photos; at query time the
cloaked probe photos). Scores come from the detector (`puface.detection`); its purified images and embeddings go
through the evaluation's content cache, so a grid with the `puface` defense and a dlib victim has
already paid for them. Per attack (seeds pooled): ROC AUC, the true-positive rate at the detector's
calibrated threshold (and at the threshold that gives 1% false positives on these natural photos), the
false-positive rate of the calibrated threshold on these natural photos, and the ROC curve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..defenses import PuFaceDefense
from ..detection.detector import CloakDetector, threshold_at_fpr
from ..utils.fingerprint import content_hashes, module_fingerprint
from .protocol import Protocol
from .tables import md_cell

__all__ = ["detection_scores", "summarise_detection", "roc_points"]


def _purifier_defense(proto: Protocol, detector: CloakDetector) -> PuFaceDefense:
    """The grid's own purifier defense when it is the detector's purifier at its own output (its cached images
    are reused), else a defense wrapping the detector's purifier (cached under its own key). A defense that goes
    another step along the change or serves another face layout is not the detector's purifier."""
    want = module_fingerprint(detector.purifier)
    for d in proto.defenses.values():
        if (isinstance(d, PuFaceDefense) and d.step == 1.0 and d.template is None and d.loaded
                and module_fingerprint(d.purifier) == want):
            return d
    return PuFaceDefense.wrapping(detector.purifier, batch_size=proto.batch_size)


def _published(proto: Protocol, images: torch.Tensor) -> torch.Tensor:
    """Training images as the trainer receives them (`Protocol.as_published`: published photos cut again)."""
    return proto.as_published(images, content_hashes(images))[0]


def _scores(proto: Protocol, detector: CloakDetector, defense: PuFaceDefense, namespaces: dict[str, str],
            images: torch.Tensor) -> np.ndarray:
    """Detector scores of uint8 chips (N, 3, S, S), with P(x) and the embeddings through the content cache."""
    if len(images) == 0:
        return np.zeros(0)
    chips = (detector.to_chips(images) * 255).round().to(torch.uint8)
    hashes = content_hashes(chips)
    purified, p_hashes = proto.defend_chips(defense, chips, hashes)
    emb = {}
    for name in detector.config.embedders:
        e = detector.embedder(name)
        emb[name] = (proto.embed_with(e, chips, hashes, namespace=namespaces[name]),
                     proto.embed_with(e, purified, p_hashes, namespace=namespaces[name]))
    return detector.features(chips, purified=purified, embeddings=emb, batch_size=proto.batch_size)["score"].numpy()


def detection_scores(proto: Protocol, detector: CloakDetector) -> dict[str, dict[str, Any]]:
    """{attack label: {"natural": scores, "cloaked": scores, "users": n, "split": "training" | "probe"}} for the
    protocol's seed (split: the protected users' photos that are cloaked, probes at query time); the clean
    reference is left out. Natural = training photos of the identities that are not protected users."""
    train = proto.data.train
    users = set(proto.users)
    nat_rows = torch.as_tensor(np.flatnonzero([lab not in users for lab in train.labels]), dtype=torch.long)
    defense = _purifier_defense(proto, detector)
    # the same key as a victim that is the same model: its embeddings are shared
    namespaces = {name: detector.embedder(name).embedding_key() for name in detector.config.embedders}
    natural = _scores(proto, detector, defense, namespaces, _published(proto, train.images[nat_rows]))
    split = "probe" if proto.cloaked_split is proto.data.test else "training"  # query time: the probes are cloaked
    out: dict[str, dict[str, Any]] = {}
    for spec in proto.attacks:
        if spec.attack is None:
            continue
        cloaked = _published(proto, torch.cat([proto.cloak(spec, u) for u in proto.users]))
        out[spec.label] = {"natural": natural, "cloaked": _scores(proto, detector, defense, namespaces, cloaked),
                           "users": len(proto.users), "split": split}
    return out


def roc_points(natural: np.ndarray, cloaked: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """The ROC curve (false-positive rate, true-positive rate), thinned to about `max_points` points."""
    from sklearn.metrics import roc_curve

    y = np.r_[np.zeros(len(natural)), np.ones(len(cloaked))]
    fpr, tpr, _ = roc_curve(y, np.r_[natural, cloaked])
    if len(fpr) > max_points:
        keep = np.unique(np.r_[0, np.linspace(0, len(fpr) - 1, max_points).round().astype(int), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def summarise_detection(per_seed: dict[int, dict[str, dict[str, Any]]], detector: CloakDetector,
                        fpr: float | None = None) -> dict[str, Any]:
    """Rows per attack (seeds pooled) and ROC curves: {"rows": [...], "roc": {attack: {fpr, tpr}}, ...}."""
    from sklearn.metrics import roc_auc_score

    thr = detector.threshold(fpr)
    attacks = list(dict.fromkeys(a for s in per_seed.values() for a in s))
    rows, roc = [], {}
    for a in attacks:
        nat = np.concatenate([s[a]["natural"] for s in per_seed.values() if a in s])
        cl = np.concatenate([s[a]["cloaked"] for s in per_seed.values() if a in s])
        y = np.r_[np.zeros(len(nat)), np.ones(len(cl))]
        auc = float(roc_auc_score(y, np.r_[nat, cl])) if len(nat) and len(cl) else float("nan")
        t1 = threshold_at_fpr(nat, 0.01) if len(nat) else float("nan")
        rows.append({
            "attack": a, "n_natural": int(len(nat)), "n_cloaked": int(len(cl)), "auc": round(auc, 5),
            "tpr": round(float((cl > thr).mean()), 5) if len(cl) else float("nan"),
            "fpr": round(float((nat > thr).mean()), 5) if len(nat) else float("nan"),
            "tpr_at_1pct": round(float((cl > t1).mean()), 5) if len(cl) else float("nan"),
            "threshold": round(thr, 5), "seeds": sum(1 for s in per_seed.values() if a in s),
        })
        roc[a] = roc_points(nat, cl)
    splits = {s[a].get("split", "training") for s in per_seed.values() for a in s}
    return {
        "rows": rows,
        "roc": roc,
        "threshold": thr,
        "cloaked_split": " / ".join(sorted(splits)) or "training",
        "fpr_target": detector.default_fpr if fpr is None else float(fpr),
        "confidence": detector.default_confidence,
        "detector": detector.fingerprint(),
    }


def detection_markdown(det: dict[str, Any]) -> str:
    """The detection table for table.md / the report; a grid without a cloaking attack (only the clean reference)
    gets a sentence saying there was nothing to detect, not a table without rows."""
    if not det["rows"]:
        return "\n".join(["## Cloak detection", "", "No cloaking attack in this grid (only the clean reference): no "
                          "cloaked photo for the detector to tell from natural ones, so nothing was measured."])
    conf = det.get("confidence")
    held = f", held with {conf:.0%} confidence on each kind of calibration photo" if conf else ""
    lines = [
        "## Cloak detection",
        "",
        f"Detector threshold {det['threshold']:.4f} (calibrated to {det['fpr_target']:.1%} false positives on natural "
        f"photos of identities the evaluation never protects{held}). "
        "Natural = training photos of the identities that are "
        f"not protected users; cloaked = the protected users' cloaked {det.get('cloaked_split', 'training')} photos. "
        "TPR and FPR at the calibrated "
        "threshold; TPR @1% FPR = at the threshold giving 1% false positives on these natural photos.",
        "",
        "| attack | natural | cloaked | AUC | TPR (%) | FPR (%) | TPR @1% FPR (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in det["rows"]:
        lines.append(
            f"| {md_cell(r['attack'])} | {r['n_natural']} | {r['n_cloaked']} | {r['auc']:.4f} | {100 * r['tpr']:.1f} | "
            f"{100 * r['fpr']:.2f} | {100 * r['tpr_at_1pct']:.1f} |"
        )
    return "\n".join(lines)
