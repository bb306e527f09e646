#!/usr/bin/env python3
"""Expected AdamW trajectories from torch.optim.AdamW, the oracle of agate's AdamW
(tests/train/test_adamw.cpp).

    .venv/bin/python tools/gen_adamw_fixture.py [--out tests/fixtures/adamw/adamw.safetensors]

Two parameters, four steps with a different learning rate each; the second parameter has no
gradient at step 3, so torch does not step it there (its own step count lags, and its bias
correction differs from the first parameter's from then on). Stored (float32):
  init.{0,1}                      starting values
  grad.{s}.{i}                    the gradient of parameter i at step s (absent: no gradient)
  param.{s}.{i}, exp_avg.{s}.{i}, exp_avg_sq.{s}.{i}   after step s
and the hyper-parameters in the metadata.
"""
import argparse
import json

import torch
from safetensors.torch import save_file

LRS = [1e-2, 5e-3, 1e-2, 2e-3]
BETAS, EPS, WD = (0.9, 0.95), 1e-8, 0.1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/adamw/adamw.safetensors")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]
    out = {f"init.{i}": p.detach().clone() for i, p in enumerate(params)}
    opt = torch.optim.AdamW(params, lr=LRS[0], betas=BETAS, eps=EPS, weight_decay=WD, foreach=False)
    for s, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        for i, p in enumerate(params):
            if s == 2 and i == 1:
                p.grad = None
                continue
            p.grad = torch.randn(p.shape, generator=g) * (0.1 if i == 0 else 10.0)
            out[f"grad.{s}.{i}"] = p.grad.clone()
        opt.step()
        for i, p in enumerate(params):
            st = opt.state[p]
            out[f"param.{s}.{i}"] = p.detach().clone()
            out[f"exp_avg.{s}.{i}"] = st["exp_avg"].clone()
            out[f"exp_avg_sq.{s}.{i}"] = st["exp_avg_sq"].clone()
    meta = {"lrs": json.dumps(LRS), "betas": json.dumps(BETAS), "eps": str(EPS), "weight_decay": str(WD),
            "torch": torch.__version__}
    save_file({k: v.contiguous() for k, v in out.items()}, a.out, metadata=meta)
    print(f"wrote {a.out} ({len(out)} tensors, torch {torch.__version__})")


if __name__ == "__main__":
    main()
