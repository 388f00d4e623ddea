#!/usr/bin/env bash
# Capture real compute-sanitizer outputs on the GPU machine as test data for the parser.
set -u
S=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
echo "sanitizer: $S"; "$S" --version
cat > /tmp/oob.py <<'PY'
import sys, torch, triton, triton.language as tl
@triton.jit
def write_past(out_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(out_ptr + i, 1.0, mask=i < n + 1)   # one element past n
@triton.jit
def read_past(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    v = tl.load(x_ptr + i, mask=i < n + 16, other=0.0)  # 16 past n
    tl.store(out_ptr + i, v, mask=i < n)
@triton.jit
def read_uninit(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(out_ptr + i, tl.load(x_ptr + i, mask=i < n) * 0.0, mask=i < n)
mode = sys.argv[1]
n = 1000
if mode == "write":
    out = torch.empty(n, device="cuda"); print("out", hex(out.data_ptr()), out.numel()*4)
    write_past[(1,)](out, n, BLOCK=1024)
elif mode == "read":
    x = torch.zeros(n, device="cuda"); out = torch.empty(n, device="cuda"); print("x", hex(x.data_ptr()), x.numel()*4)
    read_past[(1,)](x, out, n, BLOCK=1024)
elif mode == "uninit":
    x = torch.empty(n, device="cuda"); out = torch.zeros(n, device="cuda"); print("x", hex(x.data_ptr()), x.numel()*4)
    read_uninit[(1,)](x, out, n, BLOCK=1024)
torch.cuda.synchronize()
print("done")
PY
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
for m in write read; do
  echo "=== memcheck $m"; timeout 120 "$S" --tool memcheck --print-limit 5 python3 /tmp/oob.py $m; echo "rc=$?"
done
echo "=== initcheck uninit"; timeout 120 "$S" --tool initcheck --print-limit 5 python3 /tmp/oob.py uninit; echo "rc=$?"
echo "=== memcheck write xml"; timeout 120 "$S" --tool memcheck --print-limit 3 --xml --save /tmp/w.xml python3 /tmp/oob.py write; echo "rc=$?"; cat /tmp/w.xml | head -c 20000
