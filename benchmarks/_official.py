"""The official-style HGAD pipeline, for side-by-side rows measured in the same run.

What the official code does per frame, on the same model and weights:

* preprocess: PIL image → torchvision ``Resize`` / ``ToTensor`` / ``Normalize``;
* backbone: eager PyTorch (the same timm network);
* flows: eager, unfolded FrEIA ``AllInOneBlock`` s; the 2-D positional encoding is recomputed
  and repeated over the batch at every call, as the official loop does;
* gmm: the official Gaussian-mixture formula in torch — the (N, K, D) differences to the
  centers of *every* class materialised, then log-sum-exp (``benchmarks/gmm_kernel.py``'s
  ``official_torch``); the class is then the argmax of the image-mean posterior;
* postprocess: per level ``exp(logp − max)`` upsampled with ``F.interpolate`` (bilinear), summed,
  likewise the negative entropy, the product, ``scipy.ndimage.gaussian_filter(σ=4)``. The
  test-set maxima are replaced by the calibrated constants (a stream has no test set).
"""
from __future__ import annotations

import time
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F


class OfficialStylePipeline:
    name = "official-style"

    def __init__(self, model_dir: str, threads: int):
        import torchvision.transforms as T

        from hgad_edge import artifact
        from hgad_edge.runtime.eager import load_model

        try:
            from gmm_kernel import official_torch  # benchmarks/ is on sys.path when run as a script
        except ImportError:
            from benchmarks.gmm_kernel import official_torch
        self._official_gmm = official_torch
        torch.set_num_threads(threads)
        art = artifact.Artifact.read(model_dir)
        self.model = load_model(art)
        self.size = art.image_size
        self.pos_dim = int(art.model_config.pos_dim)
        w = artifact.load_tensors(model_dir, artifact.WEIGHTS)
        self.params = [{k: w[f"gmm.{l}.{k}"].numpy() for k in ("mu", "log_pi_inter", "mu_intra", "log_pi_intra")}
                       for l in range(self.model.n_levels)]
        self.norms = [art.normalizer(c) for c in art.class_names]
        self.tf = T.Compose([T.Resize((self.size, self.size)), T.ToTensor(),
                             T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def _flow_level(self, level: int, feat: torch.Tensor):
        from hgad_edge.model.flow import positional_encoding_2d

        m = self.model
        b, d, h, w = feat.shape
        pe = positional_encoding_2d(self.pos_dim, h, w).reshape(self.pos_dim, h * w).t()  # (N, P) every call
        x = feat.flatten(2).transpose(1, 2).reshape(b * h * w, d)  # (B·N, D)
        x = (x - getattr(m, f"feat_mean_{level}")) / getattr(m, f"feat_std_{level}")
        z, logdet = m.flows[level](x, c=[pe.repeat(b, 1)])  # (B·N, D), (B·N,)
        return z.reshape(b, h * w, d), logdet.reshape(b, h * w)

    def _postprocess(self, logp: List[np.ndarray], ent: List[np.ndarray], c: int, shapes, out_hw):
        from scipy.ndimage import gaussian_filter

        norm, s = self.norms[c], self.size
        ll = torch.zeros(1, 1, s, s)
        en = torch.zeros(1, 1, s, s)
        for l, (h, w) in enumerate(shapes):
            a = torch.from_numpy(np.exp(logp[l] - norm.ll_max[l])).reshape(1, 1, h, w)
            b = torch.from_numpy(np.exp(-(ent[l] - norm.ent_min[l]))).reshape(1, 1, h, w)
            ll += F.interpolate(a, size=(s, s), mode="bilinear", align_corners=True)
            en += F.interpolate(b, size=(s, s), mode="bilinear", align_corners=True)
        amap = ((norm.ll_sum_max - ll) * (norm.ent_sum_max - en))[0, 0].numpy()
        amap = gaussian_filter(amap, sigma=4)
        score = float(amap.max())
        return cv2.resize(amap, (int(out_hw[1]), int(out_hw[0])), interpolation=cv2.INTER_LINEAR), score

    @torch.no_grad()
    def predict(self, frames: Sequence[np.ndarray]) -> List[Dict[str, float]]:
        """Per frame timings (ms) of one batch, like ``Result.timings_ms``."""
        from PIL import Image

        b = len(frames)
        t0 = time.perf_counter()
        x = torch.stack([self.tf(Image.fromarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))) for f in frames])
        t1 = time.perf_counter()
        feats = self.model.extract_features(x)
        t2 = time.perf_counter()
        outs = [self._flow_level(l, f) for l, f in enumerate(feats)]
        t3 = time.perf_counter()
        shapes = [f.shape[-2:] for f in feats]
        per_frame = []
        for i in range(b):
            g0 = time.perf_counter()
            lp, en, mean = [], [], []
            for p, (z, ld) in zip(self.params, outs):
                logp_all, entropy, post = self._official_gmm(p, z[i].numpy(), ld[i].numpy())  # (N, C), (N,), (C,)
                lp.append(logp_all)
                en.append(entropy.numpy())
                mean.append(post.numpy())
            c = int(np.argmax(np.mean(mean, axis=0)))
            logp = [a[:, c].numpy() for a in lp]
            g1 = time.perf_counter()
            self._postprocess(logp, en, c, shapes, frames[i].shape[:2])
            g2 = time.perf_counter()
            per_frame.append({"preprocess": (t1 - t0) * 1e3 / b, "backbone": (t2 - t1) * 1e3 / b,
                              "flow": (t3 - t2) * 1e3 / b, "gmm": (g1 - g0) * 1e3, "postprocess": (g2 - g1) * 1e3})
        for t in per_frame:
            t["total"] = sum(t.values())
        return per_frame
