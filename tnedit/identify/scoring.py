"""The closed-form transfer score of every neuron, and the brute-force reference it is tested against.

For one sentence with pre-MLP residual ``R``, activations ``a`` and (Gemma 2/3) output-norm scale ``s``,
neuron i moves the residual by ``c_i = a_i (s ⊙ v_i)``; its score is ``cos(R + c_i, C) − cos(R, C)``.
The identity ``cos(R + a v, C) = (p + a q) / (|C| sqrt(|R|² + 2 a r + a² n))`` turns this into one
(batch × d) @ (d × m) product per layer instead of a d × m matrix per sentence.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from tnedit.errors import InputError
from tnedit.model.loading import LoadedModel, stat_device

_MM_OUT_DTYPE_OK: dict[str, bool] = {}


def _matmul(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x @ v`` accurate to fp32 accumulation for any weight dtype; returns float64 on a device
    that supports it (the CPU for MPS weights).

    ``v`` stays in its own dtype (no per-batch copy of the weight on CUDA). For half-precision
    weights on CUDA, ``x`` is split into a half-precision head and tail whose products are
    accumulated in fp32 (``torch.mm(..., out_dtype=float32)``), so the result is as accurate as an
    fp32 product of the fp32 ``x`` with the stored weight.
    """
    if v.dtype == torch.float64:
        return x.to(torch.float64).to(v.device) @ v
    x32 = x.to(torch.float32).to(v.device)
    out: torch.Tensor | None = None
    if v.dtype == torch.float32:
        out = x32 @ v
    elif v.device.type == "cuda" and _MM_OUT_DTYPE_OK.get("cuda", True):
        hi = x32.to(v.dtype)
        lo = (x32 - hi.float()).to(v.dtype)
        try:
            both = torch.mm(torch.cat([hi, lo]), v, out_dtype=torch.float32)
            out = both[: x32.shape[0]] + both[x32.shape[0] :]
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE_OK["cuda"] = False
    if out is None:
        out = x32 @ v.float()
    if out.device.type == "mps":
        out = out.cpu()
    return out.double()


def _room_for(device: torch.device, nbytes: int) -> bool:
    """Whether a cache of ``nbytes`` leaves enough accelerator memory for the forward passes."""
    if device.type != "cuda":
        return True
    try:
        free, total = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError):
        return False
    return free - nbytes > max(0.15 * total, 4 << 30)


class LayerScorer:
    """Running sums of ``cos(R + c_i, C) − cos(R, C)`` for every neuron of one layer.

    ``centroids`` maps a neuron type to its centroid (d,). For a plain or gated MLP, ``q = vᵀC``
    and ``n = |v|²`` are constants computed once; for an output norm (Gemma 2/3) they depend on the
    sentence's scale ``s`` and cost one product each per batch (``n`` against the element-wise
    squares of the weight, cached in fp32 when memory allows, else formed per column block).
    """

    def __init__(self, lm: LoadedModel, layer: int, centroids: Mapping[int, torch.Tensor]):
        # (d, m_b) views, side by side the layer's (d, m): column i is v_i. One for a dense layer; an MoE
        # layer's experts each have theirs, so no (d, experts × width) copy is made.
        self.parts = lm.neuron_weight_parts(layer)
        self.v = self.parts[0]  # the output-norm families are dense: one part
        self.device = stat_device(self.v.device)
        self.c = {t: c.to(self.device, torch.float64) for t, c in centroids.items()}
        self.c_norm = {t: c.norm() for t, c in self.c.items()}
        self.out_norm = lm.arch.out_norm is not None
        m = self.width = lm.intermediate_size if lm.is_moe else self.v.shape[1]
        self.sums = {t: torch.zeros(m, dtype=torch.float64, device=self.device) for t in self.c}
        self.count = 0
        self.v2: torch.Tensor | None = None
        if not self.out_norm:
            self.n = torch.zeros(m, dtype=torch.float64, device=self.device)
            self.q = {t: torch.zeros(m, dtype=torch.float64, device=self.device) for t in self.c}
            for offset, block in self._column_blocks():
                block = block.to(self.device, torch.float64)
                self.n[offset : offset + block.shape[1]] = (block * block).sum(0)
                for t, c in self.c.items():
                    self.q[t][offset : offset + block.shape[1]] = c @ block
        elif self.v.dtype in (torch.float32, torch.float64):
            self.v2 = self.v * self.v
        elif _room_for(self.v.device, self.v.numel() * 4):
            # The square of a half-precision weight is exact in fp32; a half-precision square is not.
            self.v2 = self.v.float().square()

    def _column_blocks(self) -> list[tuple[int, torch.Tensor]]:
        """(first column, block) over every part, each block small enough for bounded fp64 temporaries."""
        step = max(1, (1 << 24) // max(1, self.v.shape[0]))
        blocks, offset = [], 0
        for part in self.parts:
            blocks += [(offset + start, part[:, start : start + step]) for start in range(0, part.shape[1], step)]
            offset += part.shape[1]
        return blocks

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ v`` over the layer's columns, float64 on the stat device (zero past an MoE layer's neurons)."""
        if len(self.parts) == 1 and self.v.shape[1] == self.width:
            return _matmul(x, self.v).to(self.device)
        out = torch.zeros(x.shape[0], self.width, dtype=torch.float64, device=self.device)
        offset = 0
        for part in self.parts:
            out[:, offset : offset + part.shape[1]] = _matmul(x, part).to(self.device)
            offset += part.shape[1]
        return out

    def terms(
        self, r_res: torch.Tensor, scale: torch.Tensor | None
    ) -> tuple[torch.Tensor, Mapping[int, torch.Tensor], torch.Tensor]:
        """(r, {type: q}, n) for one batch, each (B, m) or (m,) float64 on the stat device."""
        if not self.out_norm:
            return self._product(r_res), self.q, self.n
        if scale is None:
            raise InputError("an output-norm architecture needs the per-sentence out_scale")
        s = scale.to(self.device, torch.float64)
        rows = [s * r_res] + [s * c for c in self.c.values()]
        prod = _matmul(torch.cat(rows), self.v).to(self.device)
        b = r_res.shape[0]
        r = prod[:b]
        q = {t: prod[(j + 1) * b : (j + 2) * b] for j, t in enumerate(self.c)}
        if self.v2 is not None:
            n = _matmul(s * s, self.v2).to(self.device)
        else:  # not enough memory to cache the squares: form them per column block
            n = torch.empty_like(r)
            s2 = (s * s).to(torch.float32).to(self.v.device)
            step = max(1, (1 << 26) // max(1, self.v.shape[0]))
            for start in range(0, self.v.shape[1], step):
                block = self.v[:, start : start + step].float().square()
                n[:, start : start + step] = (s2 @ block).to(self.device, torch.float64)
        return r, q, n

    def update(self, r_res: torch.Tensor, acts: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        """Add one batch: ``r_res`` (B, d) pre-MLP residuals, ``acts`` (B, m), ``scale`` (B, d) or None."""
        rr = r_res.to(self.device, torch.float64)
        a = acts.to(self.device, torch.float64)
        r, q, n = self.terms(rr, scale)
        r2 = (rr * rr).sum(1, keepdim=True)  # |R|²
        new_sq = (r2 + 2.0 * a * r + a * a * n).clamp_min(1e-300)
        for t, c in self.c.items():
            p = (rr @ c).unsqueeze(1)  # R·C
            denom = self.c_norm[t]
            cos_new = (p + a * q[t]) / (denom * new_sq.sqrt())
            cos_old = p / (denom * r2.clamp_min(1e-300).sqrt())
            self.sums[t] += (cos_new - cos_old).sum(0)
        self.count += rr.shape[0]


def brute_force_scores(
    r_res: torch.Tensor, acts: torch.Tensor, v: torch.Tensor, centroid: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference: materialise R + c_i for every neuron i of every sentence (fp64). Returns (m,) means.

    ``v`` is (d, m) with v_i in column i. Slow (B × d × m memory); for tests and benchmarks only.
    """
    c = centroid.detach().double().cpu()
    v = v.detach().double().cpu()
    out = torch.zeros(v.shape[1], dtype=torch.float64)
    for b in range(r_res.shape[0]):
        rr = r_res[b].detach().double().cpu()
        vv = v * scale[b].detach().double().cpu().unsqueeze(1) if scale is not None else v
        moved = rr.unsqueeze(1) + vv * acts[b].detach().double().cpu().unsqueeze(0)  # (d, m): R + a_i v_i'
        cos_new = (c @ moved) / (c.norm() * moved.norm(dim=0))
        cos_old = (rr @ c) / (rr.norm() * c.norm())
        out += (cos_new - cos_old).cpu()
    return out / r_res.shape[0]
