"""The report's feature sections: t-SNE of the segmenter's hint-layer features (tumour vs background
pixels of test cases, every method on the same pixels) with a silhouette score, and the first 24
channels of the last layer on one test slice (CT paper, Fig. 7).

The pixels are chosen once from the expert masks, so every method is judged on the same sample:
:data:`TSNE_POINTS` pixels, half inside the tumour and half in the body outside it (half of those
within :data:`NEAR_MM` of the tumour, where the two are hardest to tell apart), on the slices of
largest tumour area of up to :data:`TSNE_CASES` test cases. Features are the network's hint layers
(``forward(x, return_features=True)``) upsampled to the input and concatenated per pixel; they are
standardised per channel before t-SNE (scikit-learn, PCA initialisation, seed 0). The silhouette
score (-1..1; higher = tumour and background better separated) is given both on the standardised
features and on the 2D embedding that is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits
from torch import nn

from cmedl.data.preprocess import PreparedVolume, prepare_label, prepare_volume
from cmedl.io import read_volume
from cmedl.methods import build_test_time_model
from cmedl.methods.checkpoints import preprocess_of
from cmedl.methods.recipe import TestTimeModel
from cmedl.report.html import Section, Writer, pyplot
from cmedl.report.results import References, safe_name
from cmedl.report.sources import Source
from cmedl.training import load_checkpoint

TSNE_POINTS = 1000
TSNE_CASES = 6
SLICES_PER_CASE = 3
NEAR_MM = 10.0
FEATURE_CHANNELS = 24


@dataclass
class SliceSample:
    """Input slices of one case on the working grid and the sampled pixels (slice, row, col, label)."""

    case_id: str
    image: np.ndarray  # [k, h, w] prepared slices
    label: np.ndarray  # [k, h, w] expert mask on the working grid
    pixels: np.ndarray  # [n, 3] (slice, row, col)
    is_tumour: np.ndarray  # [n] bool


def load_model(src: Source) -> TestTimeModel:
    model, _, _ = build_test_time_model(load_checkpoint(src.checkpoint), source=src.checkpoint)
    return model.eval()


def segmenter_input(model: TestTimeModel, x: torch.Tensor) -> torch.Tensor:
    """What the recipe's segmentation network sees for input ``x`` (CT, pMRI, or both)."""
    if model.translator is None:
        return x
    pseudo = model.translator(x)
    return pseudo if model.recipe.kind == "translate-then-segment" else torch.cat([x, pseudo], dim=1)


def hint_features(model: TestTimeModel, slices: np.ndarray) -> torch.Tensor:
    """Hint-layer features ``[k, C, h, w]`` of the segmenter for prepared slices ``[k, h, w]``."""
    with torch.no_grad():
        x = segmenter_input(model, torch.from_numpy(np.ascontiguousarray(slices, np.float32))[:, None])
        _, feats = model.segmenter(x, return_features=True)
        size = slices.shape[1:]
        return torch.cat([F.interpolate(f.float(), size=size, mode="bilinear", align_corners=False)
                          if tuple(f.shape[2:]) != size else f.float() for f in feats], dim=1)


def last_layer_features(model: TestTimeModel, slices: np.ndarray) -> np.ndarray:
    """The input of the segmenter's final (1x1) convolution: its last layer's feature maps ``[k, C, h, w]``."""
    net = model.segmenter
    conv = getattr(net, "output_conv", None)
    if conv is None:
        conv = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1]
    captured: list[torch.Tensor] = []
    handle = conv.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            net(segmenter_input(model, torch.from_numpy(np.ascontiguousarray(slices, np.float32))[:, None]))
    finally:
        handle.remove()
    return captured[-1].float().numpy()


def sample_pixels(refs: References, pre_by_case: dict[str, PreparedVolume], seed: int = 0) -> list[SliceSample]:
    """The t-SNE pixels (see the module docstring), the same for every method."""
    rng = np.random.default_rng(seed)
    samples = []
    ids = sorted(pre_by_case)
    per_case = max(2, TSNE_POINTS // max(1, len(ids)) // 2)
    for cid in ids:
        prepared = pre_by_case[cid]
        label = prepare_label(read_volume(refs.label(cid)), prepared) > 0
        area = label.sum(axis=(1, 2))
        if not area.any():
            continue
        zs = np.sort(np.argsort(area)[::-1][:SLICES_PER_CASE])
        zs = zs[area[zs] > 0]
        lab, body = label[zs], prepared.body[zs]
        spacing = prepared.resampled_spacing  # (x, y, z) mm of the working grid
        dist = np.stack([ndimage.distance_transform_edt(~m, sampling=(spacing[1], spacing[0])) for m in lab])
        tumour = np.argwhere(lab)
        near = np.argwhere(body & ~lab & (dist <= NEAR_MM))
        far = np.argwhere(body & ~lab & (dist > NEAR_MM))
        pick = [tumour[rng.choice(len(tumour), min(per_case, len(tumour)), replace=False)]]
        for group, n in ((near, per_case // 2), (far, per_case - per_case // 2)):
            if len(group):
                pick.append(group[rng.choice(len(group), min(n, len(group)), replace=False)])
        pixels = np.concatenate(pick)
        is_tumour = lab[pixels[:, 0], pixels[:, 1], pixels[:, 2]]
        samples.append(SliceSample(cid, prepared.image[zs], lab, pixels, is_tumour))
    return samples


def separation(features: np.ndarray, is_tumour: np.ndarray) -> tuple[np.ndarray, float, float]:
    """t-SNE embedding of standardised features, silhouette on the features and on the embedding."""
    x = features - features.mean(axis=0)
    x /= features.std(axis=0) + 1e-6
    labels = is_tumour.astype(int)
    sil_features = float(silhouette_score(x, labels))
    if x.shape[1] > 50:
        x = PCA(50, random_state=0).fit_transform(x)
    # one OpenMP thread: on a busy 2-core machine the Barnes-Hut threads oversubscribe the cores and
    # t-SNE of 1000 points took 44 s instead of 10 s (measured while another process held a core)
    with threadpool_limits(1):
        emb = TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=0).fit_transform(x)
    return emb, sil_features, float(silhouette_score(emb, labels))


def features_sections(sources: Sequence[Source], refs: References, writer: Writer,
                      models: dict[str, TestTimeModel]) -> tuple[Section, Section, dict[str, tuple[float, float]]]:
    """The t-SNE and feature-map sections; returns also the silhouette scores per source
    ``(features, embedding)``."""
    plt = pyplot()
    tsne, fmaps = Section("tsne", "t-SNE of tumour and background features"), Section("featuremaps", "Feature maps")
    scores: dict[str, tuple[float, float]] = {}
    usable = [s for s in sources if s.name in models]
    for s in sources:
        if s.name not in models:
            line = f"{s.name}: no trained network (no checkpoint)" if s.checkpoint is None else \
                f"{s.name}: its network could not be used (see the notes of the dropout section)"
            tsne.missing.append(line)
            fmaps.missing.append(line)
    usable = [s for s in usable if models[s.name].dims == 2]
    if not usable or not refs.cases:
        if not refs.cases:
            tsne.missing.append("no labelled test cases in the data manifest")
        return tsne, fmaps, scores
    pre = {}
    ckpt_pre = {s.name: preprocess_of(load_checkpoint(s.checkpoint), "student", s.checkpoint) for s in usable}
    base_pre = ckpt_pre[usable[0].name]
    for cid in sorted(refs.cases)[:TSNE_CASES]:
        pre[cid] = prepare_volume(read_volume(refs.image(cid)), base_pre)
    samples = sample_pixels(refs, pre)
    if not samples:
        tsne.missing.append("no test case with a tumour to sample")
        return tsne, fmaps, scores
    is_tumour = np.concatenate([smp.is_tumour for smp in samples])
    fig, axes = plt.subplots(1, len(usable), figsize=(4.2 * len(usable), 4.4), squeeze=False)
    rows = []
    for ax, s in zip(axes[0], usable):
        model = models[s.name]
        if ckpt_pre[s.name] != base_pre:
            tsne.missing.append(f"{s.name}: its preprocessing differs from {usable[0].name}'s; skipped")
            ax.axis("off")
            continue
        feats = []
        for smp in samples:
            f = hint_features(model, smp.image).numpy()  # [k, C, h, w]
            feats.append(f[smp.pixels[:, 0], :, smp.pixels[:, 1], smp.pixels[:, 2]])
        emb, sil_f, sil_e = separation(np.concatenate(feats), is_tumour)
        scores[s.name] = (sil_f, sil_e)
        rows.append([s.name, len(is_tumour), int(is_tumour.sum()), f"{sil_f:.3f}", f"{sil_e:.3f}"])
        ax.scatter(emb[~is_tumour, 0], emb[~is_tumour, 1], s=4, c="#4477aa", alpha=0.5, label="background")
        ax.scatter(emb[is_tumour, 0], emb[is_tumour, 1], s=4, c="#ee6677", alpha=0.6, label="tumour")
        ax.set_title(f"{s.name}\nsilhouette: features {sil_f:.3f}, embedding {sil_e:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    tsne.blocks.append(writer.figure(fig, "tsne", "t-SNE of the segmenter's hint-layer features on the same "
                                     f"{len(is_tumour)} test pixels for every method (red: tumour; blue: body "
                                     f"outside it, half within {NEAR_MM:.0f} mm of the tumour)."))
    tsne.blocks.append(writer.table(["method", "pixels", "tumour pixels", "silhouette (features)",
                                     "silhouette (t-SNE)"], rows, "tsne_silhouette",
                                    "Separation of tumour and background pixels (silhouette score, -1..1)"))
    tsne.note(f"Pixels from {len(samples)} test case(s): {', '.join(smp.case_id for smp in samples)}.")
    _feature_maps(usable, models, samples[len(samples) // 2], writer, fmaps)
    return tsne, fmaps, scores


def _feature_maps(usable: Sequence[Source], models: dict[str, TestTimeModel], smp: SliceSample, writer: Writer,
                  sec: Section) -> None:
    plt = pyplot()
    k = int(np.argmax(smp.label.sum(axis=(1, 2))))
    for s in usable:
        maps = last_layer_features(models[s.name], smp.image[k:k + 1])[0]
        n = min(FEATURE_CHANNELS, maps.shape[0])
        cols = 6
        rows = int(np.ceil(n / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.7 * rows + 0.3), squeeze=False)
        for j, ax in enumerate(axes.ravel()):
            ax.axis("off")
            if j < n:
                ax.imshow(maps[j], cmap="viridis")
                if smp.label[k].any():
                    ax.contour(smp.label[k].astype(float), levels=[0.5], colors="white", linewidths=0.5)
                ax.set_title(f"ch {j}", fontsize=7)
        fig.suptitle(f"{s.name}: last layer, {n} of {maps.shape[0]} channels ({smp.case_id})", fontsize=9)
        fig.tight_layout()
        sec.blocks.append(writer.figure(fig, f"featuremaps_{safe_name(s.name)}",
                                        f"{s.name}: the first {n} channels of the last layer (input of the final "
                                        f"1x1 convolution) on a slice of test case {smp.case_id}; white: expert "
                                        "contour."))
