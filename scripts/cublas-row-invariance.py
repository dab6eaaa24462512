#!/usr/bin/env python3
"""Does a cuBLAS f16 GEMM give a row the same result whatever the number of rows (M) it runs with? (Evidence for
making the f16 prefill path batch invariant by routing rows; the GPU machine has PyTorch.) Prints, per M, how many
outputs of the first M rows differ from the M = 512 run, for the Llama-3-8B gate shape (14336 x 4096)."""
import torch
torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
torch.manual_seed(0)
for rows, cols in [(14336, 4096), (4096, 14336), (1024, 4096)]:
    w = torch.randn(rows, cols, device="cuda", dtype=torch.float16) * 0.02
    x = torch.randn(512, cols, device="cuda", dtype=torch.float16)
    ref = x @ w.T
    diffs = []
    for m in [1, 8, 32, 40, 64, 100, 128, 130, 200, 256, 320, 384]:
        diffs.append(f"M={m}: {(x[:m] @ w.T != ref[:m]).sum().item()}")
    print(f"cuBLAS f16 {rows}x{cols}, outputs differing from M=512: " + ", ".join(diffs))
